"""The main job: clone the expert into a TRC planner, fine-tune it with GRPO, train SB3 PPO on
the same env, and compare everything on the same held-out starts.

    python examples/bc_then_rl.py                   # TRC-DoubleIntegrator-v0, runs/DoubleIntegrator
    python examples/bc_then_rl.py --env TRC-VanDerPol-v0
    python examples/bc_then_rl.py --quick               # a short smoke run

Writes into ``--out``: ``data.npz`` (expert demonstrations, reused when present),
``trc_bc.pt`` and ``trc_rl.pt`` (load with ``policies.load_policy``), ``ppo/`` (the SB3 agent),
``results.json`` (every metric, budget and the command), ``table.md`` and PNG plots:
``learning_curves.png``, ``trajectories.png``, ``refinement.png``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import trc_gym
from baselines import ExpertPolicy, RandomPolicy, ZeroPolicy
from policies import BCConfig, GRPOConfig, TRCConfig, TRCPolicy, finetune, load_policy, train_bc
from policies.bc import PRESET_LR, evaluate_iterates
from trc_gym import datasets
from trc_gym.atomic import atomic_write
from trc_gym.evaluation import HELD_OUT_SEED, acts_by_plan, step_episodes

# The planners replanning the full horizon from every state they reach (model-predictive control)
MPC = "TRC fine-tuned (MPC)"
CLONED_MPC = "TRC cloned (MPC)"


@dataclass
class Budget:
    samples: int
    bc_epochs: int
    rl_iterations: int
    ppo_steps: int | None  # None: the tuned budget of baselines.hyperparameters
    episodes: int
    bc_batch_size: int = BCConfig.batch_size
    bc_lr: float | None = None  # None: the size's (policies.bc.PRESET_LR)
    bc_cost_weight: float = BCConfig.cost_weight
    refinement_steps: int = TRCConfig.n_refine


FULL = Budget(samples=10_000, bc_epochs=150, rl_iterations=100, ppo_steps=None, episodes=1000)
QUICK = Budget(samples=1000, bc_epochs=3, rl_iterations=3, ppo_steps=1024, episodes=50)
# Per-env settings over the defaults above (the command line overrides both). Van der Pol's
# plans are 100 RK4 steps long: the cost term's backward pass through them would make cloning
# many times slower, while imitation alone with larger batches (a rollout's cost is per call,
# hardly per plan) gets there; README's Van der Pol section measures it.
ENV_SETTINGS: dict[str, dict] = {
    "TRC-VanDerPol-v0": {"bc_batch_size": 512, "bc_cost_weight": 0.0},
}
OVERRIDABLE = ("samples", "bc_epochs", "rl_iterations", "ppo_steps", "episodes", "bc_batch_size",
               "bc_lr", "bc_cost_weight", "refinement_steps")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0", choices=trc_gym.ENV_IDS)
    parser.add_argument("--out", default=None, help="output folder (default runs/<env name>)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--samples", type=int, help="expert demonstrations")
    parser.add_argument("--bc-epochs", type=int)
    parser.add_argument("--bc-batch-size", type=int)
    parser.add_argument("--bc-lr", type=float, help="peak learning rate of cloning")
    parser.add_argument("--bc-cost-weight", type=float,
                        help="weight of the true-cost term in cloning (0: pure imitation, "
                             "much faster on long nonlinear horizons)")
    parser.add_argument("--refinement-steps", type=int, help="the planner's refinement steps K")
    parser.add_argument("--rl-iterations", type=int)
    parser.add_argument("--ppo-steps", type=int, help="PPO env steps (default: tuned budget)")
    parser.add_argument("--no-ppo", action="store_true", help="skip the PPO baseline")
    parser.add_argument("--episodes", type=int, help="held-out starts to evaluate on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--serial", action="store_true",
                        help="train PPO after TRC instead of beside it in a second process")
    return parser.parse_args(argv)


def make_budget(args: argparse.Namespace) -> Budget:
    """The run's budget: FULL (or QUICK), then the env's settings, then the command line."""
    given = {key: getattr(args, key) for key in OVERRIDABLE if getattr(args, key) is not None}
    return replace(QUICK if args.quick else FULL, **{**ENV_SETTINGS.get(args.env, {}), **given})


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env_id = args.env
    budget = make_budget(args)
    out = Path(args.out or f"runs/{env_id.removeprefix('TRC-').removesuffix('-v0')}")
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    torch.manual_seed(args.seed)
    timings: dict[str, float] = {}

    # The PPO baseline trains in a second process beside TRC (one core each; one torch thread
    # per process, since intra-op threads only fight each other on a small machine).
    torch.set_num_threads(1)
    ppo_job, pool = None, None
    if not args.no_ppo:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        ppo_job = pool.submit(train_ppo_job, env_id, budget.ppo_steps, args.seed, out / "ppo")
        if args.serial:
            ppo_job.result()

    # 1. Expert demonstrations (reused when the file matches).
    data_path = out / "data.npz"
    start = time.perf_counter()
    data = _load_matching(data_path, env_id, budget.samples, args.seed)
    if data is None:
        data = datasets.generate(env_id, budget.samples, seed=args.seed, progress=progress)
        datasets.save(data, data_path)
    timings["data_seconds"] = time.perf_counter() - start

    # 2. Behaviour cloning.
    start = time.perf_counter()
    policy = TRCPolicy.create(env_id, args.size, n_refine=budget.refinement_steps)
    bc_config = BCConfig(epochs=budget.bc_epochs, batch_size=budget.bc_batch_size,
                         lr=budget.bc_lr or PRESET_LR[args.size],
                         cost_weight=budget.bc_cost_weight, seed=args.seed)
    bc_history = train_bc(policy, data, bc_config,
                          run_dir=out / "trc_bc.run", progress=progress)
    policy.metadata["bc_seconds"] = timings["bc_seconds"] = time.perf_counter() - start
    policy.save(out / "trc_bc.pt")

    # 3. GRPO fine-tuning of a copy of the cloned planner.
    start = time.perf_counter()
    tuned = load_policy(out / "trc_bc.pt")
    rl_history = finetune(tuned, GRPOConfig(iterations=budget.rl_iterations, seed=args.seed),
                          run_dir=out / "trc_rl.run", progress=progress)
    tuned.metadata["rl_seconds"] = timings["rl_seconds"] = time.perf_counter() - start
    tuned.save(out / "trc_rl.pt")

    # 4. The SB3 PPO baseline (tuned settings), trained on the same env.
    ppo = None
    if ppo_job is not None:
        from baselines.sb3 import load_agent

        ppo_job.result()
        pool.shutdown()
        ppo = load_agent(out / "ppo")
        timings["ppo_seconds"] = ppo.info["train_seconds"]

    # 5. Everything on the same held-out starts, with the one evaluation.
    policies = {"expert": ExpertPolicy(env_id), "TRC cloned": load_policy(out / "trc_bc.pt"),
                "TRC fine-tuned": load_policy(out / "trc_rl.pt"),
                CLONED_MPC: load_policy(out / "trc_bc.pt", receding_horizon=True),
                MPC: load_policy(out / "trc_rl.pt", receding_horizon=True)}
    if ppo is not None:
        policies["PPO"] = ppo
    policies.update({"random": RandomPolicy(env_id, seed=args.seed), "zero": ZeroPolicy(env_id)})
    results = {}
    for name, candidate in policies.items():
        results[name] = trc_gym.evaluate(candidate, env_id, budget.episodes, HELD_OUT_SEED)
    results["expert"].update(parameters=None, env_steps=0)
    for name in ("TRC cloned", "TRC fine-tuned", CLONED_MPC, MPC):
        meta = policies[name].metadata
        results[name].update(parameters=policies[name].n_parameters,
                             expert_solves=meta["bc_expert_solves"],
                             env_steps=meta.get("rl_env_steps", 0),
                             train_seconds=meta["bc_seconds"] + meta.get("rl_seconds", 0.0))
    if ppo is not None:
        results["PPO"].update(parameters=ppo.n_parameters, env_steps=ppo.info["env_steps"]
                              + ppo.info.get("validation_env_steps", 0),
                              train_seconds=ppo.info["train_seconds"])
    for name in ("random", "zero"):
        results[name].update(parameters=0, env_steps=0)

    table = trc_gym.format_table(results, columns=TABLE_COLUMNS)
    header = (f"{env_id}: {budget.episodes} held-out starts (seed {HELD_OUT_SEED}); "
              f"expert mean cost {results['expert']['mean_cost']:.3f}")
    print(f"\n{header}\n\n{table}\n")
    (out / "table.md").write_text(f"{header}\n\n{table}\n")
    record = {"command": " ".join(["python", "examples/bc_then_rl.py", *(argv or sys.argv[1:])]),
              "env_id": env_id, "budget": vars(budget), "seed": args.seed, "timings": timings,
              "results": results, "bc_history": bc_history, "rl_history": rl_history}
    _write_json(out / "results.json", record)

    x0, target = trc_gym.held_out_starts(env_id, budget.episodes)
    plot_learning_curves(bc_history, rl_history, results, out / "learning_curves.png")
    plot_trajectories(policies, env_id, x0[:3], target[:3], out / "trajectories.png")
    plot_refinement(policies["TRC cloned"], policies["TRC fine-tuned"], x0, target,
                    results["expert"]["mean_cost"], out / "refinement.png")
    print(f"wrote {out}/: trc_bc.pt, trc_rl.pt, results.json, table.md, *.png")
    return record


TABLE_COLUMNS = {
    "mean_cost": ("mean cost", "{:.3f}"),
    "gap": ("gap to expert", "{:+.3%}"),
    "success_rate": ("success", "{:.1%}"),
    "terminal_error": ("terminal error", "{:.4f}"),
    "effort": ("effort", "{:.3f}"),
    "ms_per_plan": ("ms/episode", "{:.2f}"),  # one plan, or N predict calls (MPC, PPO)
    "parameters": ("parameters", "{:,}"),
    "expert_solves": ("expert solves", "{:,}"),
    "env_steps": ("env steps", "{:,}"),
}


def train_ppo_job(env_id: str, steps: int | None, seed: int, out_dir: Path) -> None:
    """Train PPO in a worker process; the agent is saved under ``out_dir``. The worker ends
    itself if the main job dies (so no orphan keeps writing into the run folder)."""
    import os
    import threading

    parent = os.getppid()

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    torch.set_num_threads(1)
    from baselines.sb3 import train_ppo

    train_ppo(env_id, steps, seed=seed, out_dir=out_dir, progress_bar=False)


def _load_matching(path: Path, env_id: str, samples: int, seed: int):
    if not path.exists():
        return None
    data = datasets.load(path, env_id=env_id)
    same = len(data) == samples and data.metadata.get("seed") == seed
    return data if same else None


def _write_json(path: Path, record: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1,
                                                                   default=float)))


# ---------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(bc_history: list[dict], rl_history: list[dict], results: dict,
                         path: Path) -> None:
    """Validation gap of cloning (per epoch) and of fine-tuning (per iteration)."""
    plt = _pyplot()
    fig, (ax_bc, ax_rl) = plt.subplots(1, 2, figsize=(11, 4))
    ax_bc.plot([r["epoch"] for r in bc_history], [r["val_gap"] for r in bc_history])
    ax_bc.set_yscale("symlog", linthresh=1e-4)
    ax_bc.set(title="behaviour cloning", xlabel="epoch", ylabel="validation gap to expert")
    ax_rl.plot([r["env_steps"] for r in rl_history], [100 * r["val_gap"] for r in rl_history],
               marker="o", label="TRC fine-tuning (GRPO)")
    ax_rl.axhline(100 * rl_history[0]["val_gap"], color="gray", ls="--", label="cloned")
    if "PPO" in results:
        ax_rl.axhline(100 * results["PPO"]["gap"], color="C3", ls=":",
                      label="PPO (held-out gap)")
    ax_rl.set(title="fine-tuning", xlabel="simulated env steps", ylabel="validation gap (%)")
    ax_rl.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectories(policies: dict, env_id: str, x0: np.ndarray, target: np.ndarray,
                      path: Path) -> None:
    """State components and controls over time of each policy from a few held-out starts."""
    plt = _pyplot()
    problem = trc_gym.make_problem(env_id)
    n, m = problem.n_state, problem.n_control
    fig, axes = plt.subplots(len(x0), n + m, figsize=(3.2 * (n + m), 2.6 * len(x0)),
                             squeeze=False)
    time_axis = np.arange(problem.horizon + 1) * problem.dt
    for name, policy in policies.items():
        if name in ("random", CLONED_MPC):  # noise, and a near-copy of the fine-tuned MPC
            continue
        if acts_by_plan(policy):
            controls = policy.plan(x0, target)
            states = problem.rollout(x0, controls)
        else:  # a stepped policy: run it through the env
            controls, states, _, _ = step_episodes(policy, env_id, x0, target, None)
        for row in range(len(x0)):
            for j in range(n):
                axes[row, j].plot(time_axis, states[row, :, j], label=name)
            for j in range(m):
                axes[row, n + j].step(time_axis[:-1], controls[row, :, j], where="post",
                                      label=name)
    for j, label in enumerate(problem.state_names + problem.control_names):
        axes[0, j].set_title(label)
        axes[-1, j].set_xlabel("time (s)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_refinement(cloned: TRCPolicy, tuned: TRCPolicy, x0: np.ndarray, target: np.ndarray,
                    expert_cost: float, path: Path) -> None:
    """Mean cost of each refinement iterate (iterate 0: the initial generator's plan)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, policy in (("cloned", cloned), ("fine-tuned", tuned)):
        costs = evaluate_iterates(policy, x0, target)
        ax.plot(range(len(costs)), np.array(costs) / expert_cost - 1, marker="o", label=name)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set(xlabel="refinement iterate", ylabel="gap to expert", title="cost per refinement")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
