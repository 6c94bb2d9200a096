"""Expert quality per env: the expert's plans from held-out starts, stepped open loop through
``gym.make(env_id)``; success rate, mean cost (the episode's -return) and solve time per plan.

    python examples/expert_quality.py                          # every registered nonlinear env
    python examples/expert_quality.py --envs TRC-Pendulum-v0 --episodes 100

Clipped finite-horizon LQR (the expert's starting plan) is measured beside the expert on the
envs named by ``--lqr`` (default Van der Pol), with how often the expert's cost exceeds it.
Solve time is the wall time of one batched ``expert_plan`` call over all starts on one thread,
divided by the number of starts. The table goes to ``--out`` (markdown) and to stdout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import trc_gym
from trc_gym.atomic import atomic_write
from trc_gym.evaluation import HELD_OUT_SEED
from trc_gym.experts.lqr import clipped_lqr_plans
from trc_gym.problem import NonlinearProblem


def nonlinear_env_ids() -> list[str]:
    """Every registered id whose problem has an iLQR expert."""
    return [i for i in trc_gym.ENV_IDS if isinstance(trc_gym.make_problem(i), NonlinearProblem)]


def step_open_loop(env_id: str, x0: np.ndarray, target: np.ndarray,
                   plans: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run each plan ``[B, N, m]`` through ``gym.make(env_id)`` without feedback: success
    ``[B]``, cost (minus the return) ``[B]`` and terminal error ``[B]`` as the env reports them
    (an episode that fails early stops there)."""
    env = gym.make(env_id)
    success, cost, error = [], [], []
    for i in range(len(x0)):
        env.reset(options={"state": x0[i], "target": target[i]})
        total = 0.0
        for u in plans[i]:
            _, reward, terminated, truncated, info = env.step(u)
            total -= reward
            if terminated or truncated:
                break
        success.append(bool(info.get("success", False)))
        error.append(float(info.get("terminal_error", np.nan)))
        cost.append(total)
    env.close()
    return np.array(success), np.array(cost), np.array(error)


def measure(env_id: str, episodes: int, seed: int, with_lqr: bool) -> list[dict]:
    """Rows of the table for one env: the expert, and clipped LQR if ``with_lqr``."""
    problem = trc_gym.make_problem(env_id)
    x0, target = trc_gym.held_out_starts(env_id, episodes, seed)
    problem.expert_plan(x0[:1], target[:1])  # warm-up (torch.func, caches)
    start = time.perf_counter()
    plans = problem.expert_plan(x0, target)
    ms = 1000.0 * (time.perf_counter() - start) / episodes
    success, cost, error = step_open_loop(env_id, x0, target, plans)
    rows = [{"env": env_id, "expert": "iLQR", "success": success.mean(), "cost": cost.mean(),
             "error": np.nanmean(error), "ms": ms}]
    if hasattr(problem, "fuel_used"):  # the rocket reports fuel beside cost
        fuel = problem.fuel_used(problem.rollout(x0, plans))
        rows[0]["notes"] = f"mean fuel {fuel.mean():.1f} kg"
    if with_lqr:
        start = time.perf_counter()
        lqr = clipped_lqr_plans(problem, x0, target)
        ms_lqr = 1000.0 * (time.perf_counter() - start) / episodes
        s_lqr, c_lqr, e_lqr = step_open_loop(env_id, x0, target, lqr)
        rows.append({"env": env_id, "expert": "clipped LQR", "success": s_lqr.mean(),
                     "cost": c_lqr.mean(), "error": np.nanmean(e_lqr), "ms": ms_lqr})
        excess = cost - c_lqr
        rows[0]["vs_lqr"] = (f"{(excess > 1e-9).sum()} of {episodes} above LQR "
                             f"(max excess {excess.max():+.2e})")
    for row in rows:
        row["episodes"] = episodes
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| env | expert | starts | success | mean cost | mean terminal error | ms/plan | "
             "vs clipped LQR / notes |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['env']} | {r['expert']} | {r['episodes']} | {r['success']:.1%} | "
                     f"{r['cost']:.3f} | {r['error']:.4f} | {r['ms']:.1f} | "
                     f"{'; '.join(r[k] for k in ('vs_lqr', 'notes') if k in r)} |")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


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
    envs = args.envs or nonlinear_env_ids()
    unknown = sorted(set(envs) - set(trc_gym.ENV_IDS))
    if unknown:
        parser.error(f"unknown env id(s) {unknown}; registered: {list(trc_gym.ENV_IDS)}")
    if args.episodes < 1:
        parser.error("--episodes must be positive")
    torch.set_num_threads(1)
    rows = []
    for env_id in envs:
        rows += measure(env_id, args.episodes, args.seed, env_id in args.lqr)
        print(table(rows[-2:] if env_id in args.lqr else rows[-1:]).splitlines()[-1], flush=True)
    text = (f"Expert plans stepped open loop through `gym.make(id)` on {args.episodes} held-out "
            f"starts per env (seed {args.seed}); ms/plan: one batched solve on one CPU thread, "
            f"per start.\n\n{table(rows)}\n")
    write_atomic(args.out, text)
    print(f"\n{text}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
