"""Where a planner's gap comes from: its per-episode excess cost over the expert on the held-out
starts, as percentiles, the share of the total excess that the worst episodes carry, and the
starts of the worst episodes.

    python examples/gap_distribution.py runs/Pendulum/trc_bc.pt --mpc     # about 1 min

A gap spread evenly over the episodes asks for a more precise planner; a gap carried by a few
episodes, from starts alike, points at those starts (on a swing-up: where the expert's swing
direction flips, and the plans of the two directions average).
"""

from __future__ import annotations

import argparse

import numpy as np

from policies import load_policy
from trc_gym.evaluation import (
    DEFAULT_EPISODES,
    expert_costs,
    feedback_path,
    held_out_starts,
    run_episodes,
)
from trc_gym.threads import one_thread

PERCENTILES = (50, 75, 90, 95, 99, 100)
WORST_SHARES = (0.01, 0.05, 0.10)


def gap_distribution(costs: np.ndarray, expert: np.ndarray) -> dict:
    """Per-episode gaps ``costs / expert - 1`` (``[B]`` each) summarised: the mean gap (a ratio
    of mean costs, as `trc_gym.evaluate` reports it), percentiles of the episodes' gaps, and
    the share of the total excess ``sum(costs - expert)`` carried by the worst episodes."""
    excess = costs - expert
    order = np.argsort(-excess)
    carried = np.cumsum(excess[order]) / excess.sum()
    return {"gap": float(costs.mean() / expert.mean() - 1.0),
            "percentiles": {q: float(np.percentile(costs / expert - 1.0, q))
                            for q in PERCENTILES},
            "worst_share": {s: float(carried[max(1, round(s * len(costs))) - 1])
                            for s in WORST_SHARES},
            "worst": order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a planner saved by the main job or trc train-bc")
    parser.add_argument("--mpc", action="store_true", help="replan at every step")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    parser.add_argument("--show", type=int, default=5, help="worst starts to print")
    args = parser.parse_args()
    policy = load_policy(args.checkpoint, receding_horizon=args.mpc)
    env_id = policy.env_id
    with one_thread():
        policy.compile(planner=args.mpc)
        x0, target = held_out_starts(env_id, args.episodes)
        path = feedback_path(env_id) if args.mpc else "plan"
        costs = run_episodes(policy, env_id, x0, target, path=path).costs
        expert = expert_costs(env_id, args.episodes)
    summary = gap_distribution(costs, expert)
    mode = "MPC" if args.mpc else "open loop"
    print(f"{args.checkpoint} ({mode}) on {args.episodes} held-out starts of {env_id}: "
          f"gap {summary['gap']:+.3%}\n")
    print("| " + " | ".join(f"p{q}" for q in PERCENTILES) + " |")
    print("|" + "---|" * len(PERCENTILES))
    print("| " + " | ".join(f"{g:+.2%}" for g in summary["percentiles"].values()) + " |\n")
    for share, carried in summary["worst_share"].items():
        print(f"the worst {share:.0%} of episodes carry {carried:.1%} of the excess")
    print("\nworst episodes: start, target, excess cost")
    for i in summary["worst"][:args.show]:
        print(f"  {np.round(x0[i], 3).tolist()}  {np.round(target[i], 3).tolist()}  "
              f"{costs[i] - expert[i]:.3f}")


if __name__ == "__main__":
    main()
