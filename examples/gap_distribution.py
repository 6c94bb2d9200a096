"""Where a planner's gap comes from: its per-episode excess cost over the expert on the held-out
starts, as percentiles, the share of the total excess that the worst episodes and the failed
ones carry, the starts of the worst episodes, and (``--by NAME``) the excess by the size of
one start coordinate.

    python examples/gap_distribution.py runs/Pendulum/trc_bc.pt --mpc --by angle   # about 1 min

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


def gap_distribution(costs: np.ndarray, expert: np.ndarray, failed: np.ndarray) -> dict:
    """Per-episode gaps ``costs / expert - 1`` (``[B]`` each) summarised: the mean gap (a ratio
    of mean costs, as `trc_gym.evaluate` reports it), percentiles of the episodes' gaps, the
    share of the total excess ``sum(costs - expert)`` carried by the worst episodes and by the
    ``failed [B]`` ones."""
    excess = costs - expert
    order = np.argsort(-excess)
    carried = np.cumsum(excess[order]) / excess.sum()
    return {"gap": float(costs.mean() / expert.mean() - 1.0),
            "percentiles": {q: float(np.percentile(costs / expert - 1.0, q))
                            for q in PERCENTILES},
            "worst_share": {s: float(carried[max(1, round(s * len(costs))) - 1])
                            for s in WORST_SHARES},
            "worst": order, "failed": int(failed.sum()),
            "failed_share": float(excess[failed].sum() / excess.sum())}


def excess_by(values: np.ndarray, costs: np.ndarray, expert: np.ndarray,
              bins: int = 6) -> list[dict]:
    """The episodes split into ``bins`` equal-width bins of ``|values| [B]``: each bin's range,
    episodes, mean gap (ratio of mean costs) and share of the total excess."""
    size = np.abs(values)
    edges = np.linspace(size.min(), size.max(), bins + 1)
    which = np.clip(np.digitize(size, edges[1:-1]), 0, bins - 1)
    excess = costs - expert
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "episodes": int(inside.sum()),
             "gap": float(costs[inside].mean() / expert[inside].mean() - 1.0),
             "share": float(excess[inside].sum() / excess.sum())}
            for b in range(bins) if (inside := which == b).any()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a planner saved by the main job or trc train-bc")
    parser.add_argument("--mpc", action="store_true", help="replan at every step")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    parser.add_argument("--show", type=int, default=5, help="worst starts to print")
    parser.add_argument("--by", metavar="NAME", help="split the excess by |x0[NAME]|, a state "
                        "coordinate (e.g. angle)")
    args = parser.parse_args()
    policy = load_policy(args.checkpoint, receding_horizon=args.mpc)
    env_id = policy.env_id
    with one_thread():
        policy.compile(planner=args.mpc)
        x0, target = held_out_starts(env_id, args.episodes)
        path = feedback_path(env_id) if args.mpc else "plan"
        episodes = run_episodes(policy, env_id, x0, target, path=path)
        expert = expert_costs(env_id, args.episodes)
    names = policy.problem.state_names
    if args.by is not None and args.by not in names:
        parser.error(f"--by must be one of the state names {list(names)}, got {args.by!r}")
    costs = episodes.costs
    summary = gap_distribution(costs, expert, ~policy.problem.success(episodes.states, target))
    mode = "MPC" if args.mpc else "open loop"
    print(f"{args.checkpoint} ({mode}) on {args.episodes} held-out starts of {env_id}: "
          f"gap {summary['gap']:+.3%}\n")
    print("| " + " | ".join(f"p{q}" for q in PERCENTILES) + " |")
    print("|" + "---|" * len(PERCENTILES))
    print("| " + " | ".join(f"{g:+.2%}" for g in summary["percentiles"].values()) + " |\n")
    for share, carried in summary["worst_share"].items():
        print(f"the worst {share:.0%} of episodes carry {carried:.1%} of the excess")
    print(f"the {summary['failed']} failed episodes carry {summary['failed_share']:.1%} of it")
    if args.by is not None:
        print(f"\n| abs({args.by}) at the start | episodes | gap | share of the excess |")
        print("|---|---|---|---|")
        for row in excess_by(x0[:, names.index(args.by)], costs, expert):
            print(f"| {row['low']:.2f} to {row['high']:.2f} | {row['episodes']} | "
                  f"{row['gap']:+.2%} | {row['share']:.1%} |")
    print("\nworst episodes: start, target, excess cost")
    for i in summary["worst"][:args.show]:
        print(f"  {np.round(x0[i], 3).tolist()}  {np.round(target[i], 3).tolist()}  "
              f"{costs[i] - expert[i]:.3f}")


if __name__ == "__main__":
    main()
