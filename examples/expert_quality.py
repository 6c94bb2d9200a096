"""Expert quality per env: the expert's plans from held-out starts, stepped open loop through
``gym.make(env_id)``; success rate, mean cost (the episode's -return), terminal error and solve
time per plan.

    python examples/expert_quality.py                          # every registered env with an
                                                               # iLQR expert
    python examples/expert_quality.py --envs TRC-Pendulum-v0 --episodes 100

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
from trc_gym.evaluation import HELD_OUT_SEED, step_episodes, trajectory_metrics
from trc_gym.experts import ILQRExpert, clipped_lqr_plans
from trc_gym.files import write_text
from trc_gym.planning_policy import PlanningPolicy
from trc_gym.problem import ControlProblem
from trc_gym.threads import one_thread

COLUMNS = ("success_rate", "mean_cost", "terminal_error", "ms_per_plan_all")


def ilqr_env_ids() -> list[str]:
    """Every registered id whose env names an iLQR expert."""
    return [i for i in trc_gym.ENV_IDS if issubclass(env_class(i).expert_class, ILQRExpert)]


class FixedPlans(PlanningPolicy):
    """Executes plans made beforehand, open loop: ``plan`` returns them for the batch of starts
    they were made for (so the env steps exactly these controls)."""

    def __init__(self, problem: ControlProblem, plans: np.ndarray):
        super().__init__(problem)
        self.plans = plans

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        if len(x0) != len(self.plans):
            raise ValueError(f"{len(self.plans)} plans were made, {len(x0)} are asked for")
        return self.plans


def timed(solve, x0: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """``solve(x0, target)`` and its wall time per start in ms."""
    start = time.perf_counter()
    plans = solve(x0, target)
    return plans, 1000.0 * (time.perf_counter() - start) / len(x0)


def measure(env_id: str, episodes: int, seed: int,
            with_lqr: bool) -> tuple[dict[str, dict], list[str]]:
    """``(rows, notes)`` for one env: the expert's row, clipped LQR's if ``with_lqr``, and notes
    (the expert's excess over LQR, the rocket's fuel)."""
    expert = trc_gym.make_expert(env_id)
    problem = expert.problem
    label = "iLQR" if isinstance(expert, ILQRExpert) else "box QP"
    x0, target = trc_gym.held_out_starts(env_id, episodes, seed)
    expert.plan(x0[:1], target[:1])  # warm-up (torch.func, caches)
    solvers = {label: expert.plan}
    if with_lqr:
        solvers["clipped LQR"] = lambda x, t: clipped_lqr_plans(problem, x, t)
    rows, costs, notes = {}, {}, []
    for name, solve in solvers.items():
        plans, ms = timed(solve, x0, target)
        episodes_run = step_episodes(FixedPlans(problem, plans), env_id, x0, target)[0]
        row = trajectory_metrics(problem, target, episodes_run)
        row["ms_per_plan_all"] = ms
        rows[f"{env_id}: {name}"], costs[name] = row, episodes_run.costs
        if name == label and hasattr(problem, "fuel_used"):  # the rocket reports fuel beside J
            fuel = problem.fuel_used(episodes_run.states).mean()
            notes.append(f"{env_id}: {label} burns {fuel:.1f} kg of fuel on average")
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
            env_rows, env_notes = measure(env_id, args.episodes, args.seed, env_id in args.lqr)
            rows.update(env_rows)
            notes += env_notes
            for name, row in env_rows.items():
                print(f"{name}: success {row['success_rate']:.1%}, mean cost "
                      f"{row['mean_cost']:.3f}, {row['ms_per_plan_all']:.1f} ms/plan",
                      flush=True)
    envs_text = "every registered env with an iLQR expert" if args.envs is None else \
        ", ".join(envs)
    lqr = [e for e in envs if e in args.lqr]
    text = (f"Produced by `{command}` ({envs_text}"
            f"{'; clipped LQR beside the expert on ' + ', '.join(lqr) if lqr else ''}).\n\n"
            f"Expert plans stepped open loop through `gym.make(id)` on {args.episodes} held-out "
            f"starts per env (seed {args.seed}); ms/plan: one batched solve of all "
            f"{args.episodes} starts on one CPU thread, per start.\n\n"
            f"{trc_gym.format_table(rows, columns=COLUMNS, first='env: expert')}\n")
    if notes:
        text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    write_text(args.out, text)
    print(f"\n{text}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
