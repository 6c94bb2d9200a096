"""Env steps per second of the native vector env (`trc_gym.vector.ControlVectorEnv`, one
batched torch step for every sub-env) against Gymnasium's ``SyncVectorEnv`` over
``gym.make(env_id)`` (a Python loop over the sub-envs), at several numbers of envs.

    python examples/benchmark_vector_env.py                          # DoubleIntegrator, CPU
    python examples/benchmark_vector_env.py --env TRC-Rocket-v0 --device cuda --rounds 5

Both step the same random in-bound float32 actions (autoresets included: each timing runs
until it has lasted ``--seconds``, at least 3 steps). The two are timed in turn, ``--rounds``
times, and the table reports the medians, so their ratio holds while the machine's speed
drifts. Steps per second count env steps: vector steps times the number of envs. Torch runs
on one thread by default (``--threads``): on a busy machine the intra-op threads of the
batched step's small operations spin and cost far more than they gain (`trc_gym.threads`).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import trc_gym
from trc_gym.envs import DEFAULT_ENV_ID

MIN_STEPS = 3  # the fewest vector steps a timing runs (SyncVectorEnv at 4096 envs is slow)


def timed_steps(envs: gym.vector.VectorEnv, actions: np.ndarray, seconds: float) -> float:
    """Env steps per second of ``envs`` stepping ``actions [T, B, m]`` in turn (cycling)
    until ``seconds`` have passed and at least `MIN_STEPS` vector steps were taken."""
    steps, start = 0, time.perf_counter()
    while steps < MIN_STEPS or time.perf_counter() - start < seconds:
        envs.step(actions[steps % len(actions)])
        steps += 1
    return steps * envs.num_envs / (time.perf_counter() - start)


def benchmark(env_id: str, sizes: list[int], device: str, rounds: int,
              seconds: float) -> list[dict[str, float]]:
    """Per number of envs: the median env steps per second of each vector env, and their
    ratio."""
    rows = []
    for num_envs in sizes:
        native = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                              device=device)
        sync = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
        space = native.single_action_space
        rng = np.random.default_rng(0)
        actions = rng.uniform(space.low, space.high,
                              (64, num_envs, *space.shape)).astype(space.dtype)
        rates: dict[str, list[float]] = {"native": [], "sync": []}
        for envs in (native, sync):  # warm up: the first steps build caches
            envs.reset(seed=0)
            envs.step(actions[0])
        for _ in range(rounds):
            for name, envs in (("native", native), ("sync", sync)):
                rates[name].append(timed_steps(envs, actions, seconds))
        native.close()
        sync.close()
        row = {name: float(np.median(r)) for name, r in rates.items()}
        rows.append({"num_envs": num_envs, **row, "ratio": row["native"] / row["sync"]})
        print(f"  {num_envs} envs done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=DEFAULT_ENV_ID, choices=trc_gym.ENV_IDS)
    parser.add_argument("--device", default="cpu", help="the native env's torch device")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024, 4096],
                        help="numbers of envs")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each, alternating")
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one timing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default; see trc_gym.threads)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.env}, native on {args.device}, torch threads {torch.get_num_threads()}, "
          f"median of {args.rounds} rounds")
    rows = benchmark(args.env, args.sizes, args.device, args.rounds, args.seconds)
    print("\n| envs | native env steps/s | sync env steps/s | native / sync |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['num_envs']} | {row['native']:,.0f} | {row['sync']:,.0f} | "
              f"{row['ratio']:.1f}x |")


if __name__ == "__main__":
    main()
