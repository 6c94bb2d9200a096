"""The floor of full-horizon MPC: the expert itself, replanning the whole horizon N from every
state it reaches and applying the first control (what the planners' "(MPC)" rows do), against
its own open-loop plan, on the same held-out starts.

    python examples/mpc_floor.py                                        # double integrator, 1000
    python examples/mpc_floor.py --env TRC-VanDerPol-v0 --episodes 50   # 5.5 min, loaded core

Each replanned plan looks N steps ahead of the state it starts from, past the episode's end, so
it weighs the last steps differently from the episode's own cost: even an exact planner loses a
little as MPC. A learned planner's MPC row can approach this floor, not the open-loop optimum.
"""

from __future__ import annotations

import argparse

import trc_gym
from baselines import ExpertPolicy
from trc_gym.evaluation import DEFAULT_EPISODES
from trc_gym.threads import one_thread

COLUMNS = ("mean_cost", "gap", "success_rate", "terminal_error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0", choices=trc_gym.ENV_IDS)
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    args = parser.parse_args()
    with one_thread():
        results = {name: trc_gym.evaluate(ExpertPolicy(args.env, receding_horizon=mpc),
                                          args.env, args.episodes, latency_samples=0)
                   for name, mpc in (("expert", False), ("expert (MPC)", True))}
    print(f"{args.env}: {args.episodes} held-out starts\n")
    print(trc_gym.format_table(results, columns=COLUMNS))


if __name__ == "__main__":
    main()
