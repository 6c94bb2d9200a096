"""Behaviour-cloning benchmark: the three TRC sizes (and ablations) on one env, judged on held-out
starts: gap to the expert, success, terminal error, the mean cost of every refinement iterate,
parameters and milliseconds per plan at batch 1 (also as a multiple of the expert's) and batch 1024.

    python examples/benchmark_bc.py                         # small, medium, large, small without
                                                            # error feedback, small with attention
    python examples/benchmark_bc.py --models small small-no-feedback --epochs 50

Writes ``--out``/benchmark.md, benchmark.json, refinement.png and trajectories.png, and keeps
each trained model (``<model>.pt``, logs in ``<model>.run/``): a rerun only evaluates those
(``--retrain`` trains them again), so models can be added one invocation at a time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import trc_gym
from baselines import ExpertPolicy
from policies import BCConfig, TRCPolicy, load_policy, train_bc
from policies.bc import evaluate_iterates
from trc_gym import datasets
from trc_gym.evaluation import (
    DEFAULT_EPISODES,
    batch_ms_per_plan,
    expert_costs,
    gap,
    plan_latencies_ms,
)
from trc_gym.files import read_csv_rows, write_json, write_text
from trc_gym.threads import one_thread

MODELS = {  # name -> (preset, overrides)
    "small": ("small", {}),
    "medium": ("medium", {}),
    "large": ("large", {}),
    "small-no-feedback": ("small", {"error_feedback": False}),
    "small-attention": ("small", {"reasoning": "attention"}),
}
COLUMNS = ("parameters", "gap", "success_rate", "terminal_error", "ms_per_plan", "vs_expert",
           "ms_per_plan_batched", "train_seconds", "epochs")
BATCH = 1024  # starts planned in one call for the batched time
LATENCY_STARTS = 200  # batch-1 calls timed per planner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0", choices=trc_gym.ENV_IDS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    parser.add_argument("--lr", type=float,
                        help="peak learning rate of every model (default: each preset's)")
    parser.add_argument("--cost-weight", type=float, default=BCConfig.cost_weight,
                        help="weight of the true-cost term in the cloning loss (0: imitation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/benchmark_bc")
    parser.add_argument("--retrain", action="store_true",
                        help="train every model again (default: reuse OUT/<model>.pt)")
    args = parser.parse_args()
    with one_thread():  # small matrices gain nothing from more threads
        benchmark(args)


def benchmark(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / f"data_{args.samples}.npz"
    if data_path.exists():
        data = datasets.load(data_path, env_id=args.env)
    else:
        data = datasets.generate(args.env, args.samples, seed=args.seed)
        datasets.save(data, data_path)
    x0, target = trc_gym.held_out_starts(args.env, args.episodes)
    expert_cost = float(expert_costs(args.env, args.episodes).mean())

    rows, policies = {}, {}
    for name in args.models:
        preset, overrides = MODELS[name]
        checkpoint = out / f"{name}.pt"
        if checkpoint.exists() and not args.retrain:  # kept from a previous run: evaluate only
            policy = load_policy(checkpoint)
        else:
            torch.manual_seed(args.seed)
            policy = TRCPolicy.create(args.env, preset, **overrides)
            train_bc(policy, data, BCConfig(epochs=args.epochs, lr=args.lr, seed=args.seed,
                                            cost_weight=args.cost_weight),
                     run_dir=out / f"{name}.run", progress=False)
            policy.save(checkpoint)
        log = read_csv_rows(out / f"{name}.run" / "bc_log.csv")
        metrics = trc_gym.evaluate(policy, args.env, args.episodes)
        iterate_costs = evaluate_iterates(policy, x0, target)
        metrics.update({f"iterate_{k}": cost for k, cost in enumerate(iterate_costs)})
        metrics["ms_per_plan_batched"] = batch_ms_per_plan(policy, x0[:BATCH], target[:BATCH])
        metrics.update(parameters=policy.n_parameters,
                       train_seconds=sum(row["seconds"] for row in log) if log else None,
                       epochs=policy.metadata["bc_epochs"])
        rows[name], policies[name] = metrics, policy
        print(f"{name}: gap {metrics['gap']:+.3%}, success {metrics['success_rate']:.1%}, "
              f"iterates {np.round(iterate_costs, 3).tolist()}")

    # Batch-1 latency again, the planners and the expert in turn: their ratio holds while the
    # machine's speed drifts.
    batch1 = plan_latencies_ms({**policies, "expert": ExpertPolicy(args.env)},
                               x0[:LATENCY_STARTS], target[:LATENCY_STARTS])
    for name, row in rows.items():
        row["ms_per_plan"], row["vs_expert"] = batch1[name], batch1[name] / batch1["expert"]

    table = trc_gym.format_table(rows, columns=COLUMNS, first="model")
    n_iterates = max(len(iterates(row)) for row in rows.values())
    iterate_table = trc_gym.format_table(
        rows, columns=tuple(f"iterate_{k}" for k in range(n_iterates)), first="model")
    report = (f"{args.env}, {args.samples} demonstrations, {args.episodes} held-out starts; "
              f"expert mean cost {expert_cost:.3f}\n\n"
              f"{table}\n\nMean cost of each refinement iterate (0: initial generator):\n\n"
              f"{iterate_table}\n")
    print("\n" + report)
    write_text(out / "benchmark.md", report)
    write_json(out / "benchmark.json", rows)
    plot(rows, policies, args.env, x0[:3], target[:3], expert_cost, out)


def iterates(metrics: dict) -> list[float]:
    """The mean cost of each refinement iterate (``iterate_<k>``), in order."""
    costs = []
    while f"iterate_{len(costs)}" in metrics:
        costs.append(metrics[f"iterate_{len(costs)}"])
    return costs


def plot(rows: dict, policies: dict, env_id: str, x0: np.ndarray, target: np.ndarray,
         expert_cost: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, metrics in rows.items():
        gaps = [gap(cost, expert_cost) for cost in iterates(metrics)]
        ax.plot(range(len(gaps)), gaps, marker="o", label=name)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set(xlabel="refinement iterate (0: initial generator)", ylabel="gap to expert",
           title="cost per refinement iterate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "refinement.png", dpi=110)
    plt.close(fig)

    expert = trc_gym.make_expert(env_id)
    problem = expert.problem
    fig, axes = plt.subplots(1, problem.n_state + problem.n_control, figsize=(12, 3.5))
    t = np.arange(problem.horizon + 1) * problem.dt
    for name, plans in [("expert", expert.plan(x0, target))] + [(n, p.plan(x0, target)) for n, p
                                                                in policies.items()]:
        states = problem.rollout(x0, plans)
        style = {"color": "k", "lw": 2.5, "alpha": 0.4} if name == "expert" else {"lw": 1}
        for i in range(len(x0)):
            label = name if i == 0 else None
            for j in range(problem.n_state):
                axes[j].plot(t, states[i, :, j], label=label, **style)
            for j in range(problem.n_control):
                axes[problem.n_state + j].step(t[:-1], plans[i, :, j], where="post", **style)
    for j, title in enumerate(problem.state_names + problem.control_names):
        axes[j].set(title=title, xlabel="time (s)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "trajectories.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
