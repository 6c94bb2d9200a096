"""What the iLQR experts' global strategy costs in time: each expert against the same expert with
its screening stage and barrier continuation off (``screen_keep = 0``, only the first barrier
stage), timed alternately in one run on one thread, with the ratio and the mean J of both.

    python examples/benchmark_expert.py                        # every env with an iLQR expert
    python examples/benchmark_expert.py --envs TRC-CartPole-v0 --starts 100 --repeats 3

The reduced expert keeps every other initial guess, so on envs whose guesses moved into the
screen (CartPole's energy pumping) it solves from fewer plans than an expert without a screen
would: the ratio is an upper bound on the strategy's price. Times are one batched
``Expert.plan`` call over ``--starts`` held-out starts, per start, the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import trc_gym
from trc_gym.envs import env_class
from trc_gym.evaluation import HELD_OUT_SEED
from trc_gym.experts import ILQRExpert
from trc_gym.threads import one_thread


def reduced(expert: ILQRExpert) -> ILQRExpert:
    """The same expert with no screening and only its first barrier stage."""
    base = type(expert)
    plain = type(f"Plain{base.__name__}", (base,),
                 {"screen_keep": 0, "barrier_stages": base.barrier_stages[:1]})
    return plain(expert.problem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ilqr_envs = [i for i in trc_gym.ENV_IDS if issubclass(env_class(i).expert_class, ILQRExpert)]
    parser.add_argument("--envs", nargs="+", default=ilqr_envs, choices=ilqr_envs)
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.starts < 1 or args.repeats < 1:
        parser.error("--starts and --repeats must be positive")
    print("| env | ms/plan with the strategy | without | ratio | mean J with | without |")
    print("|---|---|---|---|---|---|")
    with one_thread():
        for env_id in args.envs:
            full = trc_gym.make_expert(env_id)
            experts = {"full": full, "reduced": reduced(full)}
            x0, target = trc_gym.held_out_starts(env_id, args.starts, HELD_OUT_SEED)
            times: dict[str, list[float]] = {name: [] for name in experts}
            costs = {}
            for expert in experts.values():
                expert.plan(x0[:1], target[:1])  # warm-up (torch.func, caches)
            for _ in range(args.repeats):
                for name, expert in experts.items():  # alternating: drift hits both alike
                    start = time.perf_counter()
                    plans = expert.plan(x0, target)
                    times[name].append(1000.0 * (time.perf_counter() - start) / args.starts)
                    costs[name] = float(np.mean(full.problem.cost(x0, target, plans)))
            ms = {name: statistics.median(t) for name, t in times.items()}
            print(f"| {env_id} | {ms['full']:.1f} | {ms['reduced']:.1f} | "
                  f"{ms['full'] / ms['reduced']:.2f}x | {costs['full']:.4f} | "
                  f"{costs['reduced']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
