"""The seed's "Test 3" comparison with the shared evaluation: expert vs random vs zero controls.

    python examples/expert_vs_random.py --env TRC-DoubleIntegrator-v0 --episodes 1000
"""

from __future__ import annotations

import argparse

import trc_gym
from baselines import ExpertPolicy, RandomPolicy, ZeroPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0", choices=trc_gym.ENV_IDS)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=trc_gym.evaluation.HELD_OUT_SEED)
    args = parser.parse_args()
    policies = {"expert": ExpertPolicy(args.env), "random": RandomPolicy(args.env),
                "zero": ZeroPolicy(args.env)}
    results = {name: trc_gym.evaluate(policy, args.env, args.episodes, args.seed)
               for name, policy in policies.items()}
    print(f"{args.env}, {args.episodes} held-out starts (seed {args.seed})\n")
    print(trc_gym.format_table(results))


if __name__ == "__main__":
    main()
