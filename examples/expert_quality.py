"""Expert quality per env: the expert's plans from held-out starts, stepped through
``gym.make(env_id)`` as `baselines.ExpertPolicy` steps them (planned from the float32 first
observation, float32 actions), tracked with the expert's feedback gains and open loop; success
rates, mean cost (the episode's -return), terminal error and solve time per plan.

    python examples/expert_quality.py                          # every registered env with an
                                                               # iLQR expert
    python examples/expert_quality.py --envs TRC-Pendulum-v0 --episodes 100

Each expert plan's cost J is compared with an independent reference's from the same start
(`trc_gym.experts.reference`: IPOPT on a multiple-shooting NLP of dynamics written again in
CasADi, started from the expert's plan, from zeros and from guesses of its own; the lowest J
that succeeds wins): the distribution of ``J_expert / J_reference - 1`` over the starts (mean,
95th percentile, worst), and the reference's time per start. ``--no-reference`` skips it (it
needs CasADi, in the package's ``reference`` and ``dev`` extras).

Clipped finite-horizon LQR (the iLQR expert's starting plan) is measured beside the expert on
the envs named by ``--lqr`` (default Van der Pol), with how often the expert's cost exceeds it.
Solve time is the wall time of one batched ``Expert.plan`` call over all starts on one thread,
divided by the number of starts. The table goes to ``--out`` (markdown, headed by the command
that wrote it) and to stdout.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import trc_gym
from trc_gym.envs import env_class
from trc_gym.envs.base import observation_parts, observations
from trc_gym.evaluation import HELD_OUT_SEED, step_episodes, trajectory_metrics
from trc_gym.experts import ILQRExpert, clipped_lqr_plans
from trc_gym.files import write_text
from trc_gym.planning_policy import PlanningPolicy
from trc_gym.problem import ControlProblem
from trc_gym.threads import one_thread

COLUMNS = ("success_rate", "open_loop_success", "mean_cost", "terminal_error", "ms_per_plan_all",
           "excess_mean", "excess_p95", "excess_max", "reference_s_per_plan")


def ilqr_env_ids() -> list[str]:
    """Every registered id whose env names an iLQR expert."""
    return [i for i in trc_gym.ENV_IDS if issubclass(env_class(i).expert_class, ILQRExpert)]


class FixedPlans(PlanningPolicy):
    """Executes plans made beforehand for the batch of starts they were made for: tracked with
    ``gains`` ``[B, N, m, n]`` where given, else open loop."""

    def __init__(self, problem: ControlProblem, plans: np.ndarray,
                 gains: np.ndarray | None = None):
        super().__init__(problem, "")
        self.plans, self.gains = plans, gains

    @property
    def feedback(self) -> bool:
        return self.gains is not None

    def plan_and_gains(self, x0: np.ndarray,
                       target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if len(x0) != len(self.plans):
            raise ValueError(f"{len(self.plans)} plans were made, {len(x0)} are asked for")
        return self.plans, self.gains

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        return self.plan_and_gains(x0, target)[0]


def timed(solve, x0: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """``solve(x0, target)`` and its wall time per start in ms."""
    start = time.perf_counter()
    plans = solve(x0, target)
    return plans, 1000.0 * (time.perf_counter() - start) / len(x0)


def reference_excess(problem: ControlProblem, x0: np.ndarray, target: np.ndarray,
                     plans: np.ndarray) -> dict[str, float]:
    """The excess of ``plans``' cost over the reference's from the same starts (mean, p95,
    worst) and the reference's seconds per start."""
    from trc_gym.experts.reference import reference_plans

    x0, target = (np.asarray(a, dtype=np.float64) for a in (x0, target))
    start = time.perf_counter()
    _, best = reference_plans(problem, x0, target, guesses=[plans])
    seconds = (time.perf_counter() - start) / len(x0)
    excess = problem.cost(x0, target, plans) / best - 1.0
    return {"excess_mean": float(excess.mean()), "excess_p95": float(np.quantile(excess, 0.95)),
            "excess_max": float(excess.max()), "reference_s_per_plan": seconds}


def measure(env_id: str, episodes: int, seed: int, with_lqr: bool,
            with_reference: bool) -> tuple[dict[str, dict], list[str]]:
    """``(rows, notes)`` for one env: the expert's row (with its excess over the reference if
    ``with_reference``), clipped LQR's if ``with_lqr``, and notes (the expert's excess over LQR,
    the rocket's fuel)."""
    expert = trc_gym.make_expert(env_id)
    problem = expert.problem
    label = "iLQR" if isinstance(expert, ILQRExpert) else "box QP"
    x0, target = trc_gym.held_out_starts(env_id, episodes, seed)
    # What the policy sees: the env's float32 first observation.
    seen = observation_parts(observations(problem, x0, target, 0), problem.n_state)[:2]
    expert.plan(*(a[:1] for a in seen))  # warm-up (torch.func, caches)
    solvers = {label: expert.plan_and_gains}
    if with_lqr:
        solvers["clipped LQR"] = lambda x, t: (clipped_lqr_plans(problem, x, t), None)
    rows, costs, notes = {}, {}, []
    for name, solve in solvers.items():
        (plans, gains), ms = timed(solve, *seen)
        open_loop = step_episodes(FixedPlans(problem, plans), env_id, x0, target)[0]
        run = open_loop if gains is None else \
            step_episodes(FixedPlans(problem, plans, gains), env_id, x0, target)[0]
        row = trajectory_metrics(problem, target, run)
        row["open_loop_success"] = trajectory_metrics(problem, target,
                                                      open_loop)["success_rate"]
        row["ms_per_plan_all"] = ms
        if name == label and with_reference:
            row.update(reference_excess(problem, *seen, plans))
        rows[f"{env_id}: {name}"], costs[name] = row, run.costs
        if name == label and "fuel_used" in row:  # the rocket reports fuel beside J
            notes.append(f"{env_id}: {label} burns {row['fuel_used']:.1f} kg of fuel on average")
    if with_lqr:
        excess = costs[label] - costs["clipped LQR"]
        notes.append(f"{env_id}: {label}'s cost is above clipped LQR's on {(excess > 1e-9).sum()}"
                     f" of {episodes} starts (max excess {excess.max():+.2e})")
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=None, help="env ids (default: every "
                        "registered env with an iLQR expert)")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--lqr", nargs="*", default=["TRC-VanDerPol-v0"],
                        help="envs on which clipped LQR is measured beside the expert")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the comparison with the CasADi/IPOPT reference")
    parser.add_argument("--out", type=Path, default=Path("docs/expert_quality.md"))
    args = parser.parse_args()
    envs = args.envs or ilqr_env_ids()
    unknown = sorted(set(envs) - set(trc_gym.ENV_IDS))
    if unknown:
        parser.error(f"unknown env id(s) {unknown}; registered: {list(trc_gym.ENV_IDS)}")
    if args.episodes < 1:
        parser.error("--episodes must be positive")
    command = shlex.join(["python", "examples/expert_quality.py", *sys.argv[1:]])
    rows, notes = {}, []
    with one_thread():
        for env_id in envs:
            env_rows, env_notes = measure(env_id, args.episodes, args.seed, env_id in args.lqr,
                                          args.reference)
            rows.update(env_rows)
            notes += env_notes
            for name, row in env_rows.items():
                excess = (f", excess over reference mean {row['excess_mean']:+.3%}, worst "
                          f"{row['excess_max']:+.3%}" if "excess_mean" in row else "")
                print(f"{name}: success {row['success_rate']:.1%} (open loop "
                      f"{row['open_loop_success']:.1%}), mean cost "
                      f"{row['mean_cost']:.3f}, {row['ms_per_plan_all']:.1f} ms/plan{excess}",
                      flush=True)
    envs_text = "every registered env with an iLQR expert" if args.envs is None else \
        ", ".join(envs)
    lqr = [e for e in envs if e in args.lqr]
    text = (f"Produced by `{command}` ({envs_text}"
            f"{'; clipped LQR beside the expert on ' + ', '.join(lqr) if lqr else ''}).\n\n"
            f"Expert plans stepped through `gym.make(id)` on {args.episodes} held-out starts per "
            f"env (seed {args.seed}), planned from the float32 first observation, with float32 "
            f"actions: tracked with the expert's feedback gains (success, mean cost, terminal "
            f"error), and open loop (the plans alone; clipped LQR's plans are open loop). "
            f"ms/plan: one batched solve of all {args.episodes} starts on one CPU thread, gains "
            f"included, per start."
            + (" Excess over reference: the expert's plan cost J over the best J of an independent"
               " IPOPT multiple-shooting solve (`trc_gym.experts.reference`: started from the "
               "expert's plan, from zeros and from guesses of its own) from the same start, "
               "over the starts; reference s/plan: its time per start." if args.reference else "")
            + "\n\n"
            f"{trc_gym.format_table(rows, columns=COLUMNS, first='env: expert')}\n")
    if notes:
        text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    write_text(args.out, text)
    print(f"\n{text}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
