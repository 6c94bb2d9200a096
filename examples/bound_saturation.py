"""Where a policy's gap comes from when the optimal plan rides the control bound: the held-out
starts split by whether the expert's plan from them holds a control at the bound, with the
policy's gap on each group and the share of its excess each carries, and how close the policy's
own controls come to the bound where the expert's sit on it.

    python examples/bound_saturation.py runs/compare/DoubleIntegrator/sac

A squashed-Gaussian policy (SAC's tanh) reaches the bound only as its mean goes to infinity, and
its entropy bonus pays it to stay off it; a clipped Gaussian (PPO's) reaches it with a finite
mean. On a box-constrained optimum that saturates, the first costs a squashed policy precision
exactly on the saturating starts.
"""

from __future__ import annotations

import argparse

import numpy as np

from trc_gym.cli import load_any_policy
from trc_gym.envs import make_expert
from trc_gym.evaluation import DEFAULT_EPISODES, gap, held_out_starts, run_episodes
from trc_gym.threads import one_thread

AT_BOUND = 1e-6  # a control within this share of the bound's half-width counts as at it


def saturation_split(problem, expert_plans: np.ndarray, expert_costs: np.ndarray,
                     controls: np.ndarray, costs: np.ndarray) -> dict:
    """``expert_plans, controls [B, N, m]`` and their costs ``[B]`` summarised by whether the
    expert's plan holds a control at the bound (any step, any control)."""
    half = (problem.u_high - problem.u_low) / 2.0
    mid = (problem.u_high + problem.u_low) / 2.0
    expert_load = np.abs(expert_plans - mid) / half  # 1 at the bound
    policy_load = np.abs(controls - mid) / half
    at_bound = expert_load >= 1.0 - AT_BOUND
    saturating = at_bound.any(axis=(1, 2))
    excess = costs - expert_costs
    groups = {}
    for name, rows in (("saturating", saturating), ("not saturating", ~saturating)):
        groups[name] = {"starts": int(rows.sum()),
                        "gap": gap(costs[rows].mean(), expert_costs[rows].mean())
                        if rows.any() else float("nan"),
                        "excess_share": float(excess[rows].sum() / excess.sum())}
    return {"gap": gap(costs.mean(), expert_costs.mean()), "groups": groups,
            "expert_controls_at_bound": float(at_bound.mean()),
            # Where the expert's control is at the bound: how far toward it the policy's goes.
            "policy_load_where_expert_at_bound": float(np.median(policy_load[at_bound]))
            if at_bound.any() else float("nan"),
            "policy_controls_at_bound": float((policy_load >= 1.0 - AT_BOUND).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="an SB3 agent or run folder, a TRC checkpoint, or expert")
    parser.add_argument("--env", default=None, help="env id (default: the policy's own)")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    args = parser.parse_args()
    policy, env_id = load_any_policy(args.policy, args.env)
    expert = make_expert(env_id)
    problem = expert.problem
    with one_thread():
        x0, target = held_out_starts(env_id, args.episodes)
        plans = expert.plan(x0, target)
        episodes = run_episodes(policy, env_id, x0, target)
    summary = saturation_split(problem, plans, problem.cost(x0, target, plans),
                               episodes.controls, episodes.costs)
    print(f"{args.policy} on {env_id}, {args.episodes} held-out starts: gap "
          f"{summary['gap']:+.3%}")
    print(f"expert controls at the bound: {summary['expert_controls_at_bound']:.1%}; the "
          f"policy's: {summary['policy_controls_at_bound']:.1%}; where the expert's is at the "
          f"bound the policy's reaches (median) {summary['policy_load_where_expert_at_bound']:.1%}"
          f" of the way from the middle")
    for name, group in summary["groups"].items():
        print(f"  {name:>15}: {group['starts']:5d} starts, gap {group['gap']:+.3%}, "
              f"{group['excess_share']:.1%} of the excess")


if __name__ == "__main__":
    main()
