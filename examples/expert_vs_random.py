"""The expert against random and zero controls on the same held-out starts, with the shared
evaluation (`trc_gym.evaluate`).

    python examples/expert_vs_random.py --env TRC-DoubleIntegrator-v0 --episodes 1000
"""

from __future__ import annotations

import argparse

import trc_gym
from baselines import ExpertPolicy, RandomPolicy, ZeroPolicy
from trc_gym.evaluation import DEFAULT_COLUMNS, DEFAULT_EPISODES, HELD_OUT_SEED
from trc_gym.threads import one_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0", choices=trc_gym.ENV_IDS)
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    args = parser.parse_args()
    policies = {"expert": ExpertPolicy(args.env), "random": RandomPolicy(args.env),
                "zero": ZeroPolicy(args.env)}
    with one_thread():
        results = {name: trc_gym.evaluate(policy, args.env, args.episodes, args.seed)
                   for name, policy in policies.items()}
    print(f"{args.env}, {args.episodes} held-out starts (seed {args.seed})\n")
    groups = tuple(f"terminal_error_{g}" for g in trc_gym.make_problem(args.env).error_groups)
    print(trc_gym.format_table(results, columns=(*DEFAULT_COLUMNS, *groups)))


if __name__ == "__main__":
    main()
