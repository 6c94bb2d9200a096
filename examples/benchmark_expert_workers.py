"""What spreading a slow expert's solves over processes buys: `Expert.plan_in_chunks` on held-out
starts in one process against ``--workers`` processes, timed alternately in one run, with the
ratio and the largest difference between the two runs' plans (the same chunks are solved, so
it should be zero).

    python examples/benchmark_expert_workers.py                               # ObstacleNav
    python examples/benchmark_expert_workers.py --env TRC-Rocket-v0 --chunk-size 32

The evaluation solves its 1000 reference plans this way on every core, and `baselines.ExpertPolicy`
its own; data generation does too (``DataConfig.workers``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import trc_gym
from trc_gym.envs import env_class
from trc_gym.evaluation import HELD_OUT_SEED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parallel = [i for i in trc_gym.ENV_IDS if env_class(i).expert_class.parallel]
    parser.add_argument("--env", default="TRC-ObstacleNav-v0", choices=parallel)
    parser.add_argument("--starts", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if min(args.starts, args.chunk_size, args.repeats) < 1 or args.workers < 2:
        parser.error("--starts, --chunk-size and --repeats must be positive, --workers >= 2")
    expert = trc_gym.make_expert(args.env)
    x0, target = trc_gym.held_out_starts(args.env, args.starts, HELD_OUT_SEED)
    times: dict[int, list[float]] = {1: [], args.workers: []}
    plans = {}
    for r in range(args.repeats):
        for workers in (1, args.workers) if r % 2 == 0 else (args.workers, 1):
            start = time.perf_counter()
            plans[workers] = expert.plan_in_chunks(x0, target, workers, args.chunk_size)
            times[workers].append(time.perf_counter() - start)
    one, many = (statistics.median(times[k]) for k in (1, args.workers))
    difference = float(np.abs(plans[1] - plans[args.workers]).max())
    print(f"{args.env}: {args.starts} starts in chunks of {args.chunk_size}, median of "
          f"{args.repeats} alternating rounds, {os.cpu_count()} cores")
    print(f"1 process {one:.1f} s, {args.workers} processes {many:.1f} s: {one / many:.2f}x; "
          f"max |plan difference| {difference:.1e}")


if __name__ == "__main__":
    main()
