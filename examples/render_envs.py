"""One rgb_array picture per registered env, saved as PNG: each env is reset from a seeded start,
then stepped with its expert's plan for a fraction of the horizon before the frame is taken.

    python examples/render_envs.py                      # every registered id -> docs/envs/
    python examples/render_envs.py --envs TRC-Pendulum-v0 --fraction 0.3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import matplotlib.image
import numpy as np

import trc_gym
from trc_gym.files import atomic_write


def picture_name(env_id: str) -> str:
    """``TRC-VanDerPol-v0`` -> ``van_der_pol``-style file stem: ``vanderpol``."""
    return env_id.removeprefix("TRC-").rsplit("-v", 1)[0].lower()


def render_frame(env_id: str, seed: int, fraction: float) -> np.ndarray:
    """The ``[H, W, 3]`` uint8 frame after ``fraction`` of the expert's plan from the start
    drawn with ``seed`` (earlier if the episode ends first)."""
    env = gym.make(env_id, render_mode="rgb_array")
    _, info = env.reset(seed=seed)
    problem = env.unwrapped.problem
    expert = env.unwrapped.expert_class(problem)
    plan = expert.plan(info["state"][None], info["target"][None])[0]
    for u in plan[:round(fraction * problem.horizon)]:
        _, _, terminated, truncated, _ = env.step(u)
        if terminated or truncated:
            break
    frame = env.render()
    env.close()
    return frame


def save_png(frame: np.ndarray, path: Path) -> None:
    """Write ``frame`` to ``path`` atomically (`trc_gym.files.atomic_write`)."""
    atomic_write(path, lambda tmp: matplotlib.image.imsave(tmp, frame, format="png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(trc_gym.ENV_IDS))
    parser.add_argument("--seed", type=int, default=3, help="start seed (3: a visible swing)")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="share of the horizon stepped before the picture (0 to 1)")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/envs"))
    args = parser.parse_args()
    unknown = sorted(set(args.envs) - set(trc_gym.ENV_IDS))
    if unknown:
        parser.error(f"unknown env id(s) {unknown}; registered: {list(trc_gym.ENV_IDS)}")
    if not 0.0 <= args.fraction <= 1.0:
        parser.error("--fraction must be within [0, 1]")
    for env_id in args.envs:
        path = args.out_dir / f"{picture_name(env_id)}.png"
        save_png(render_frame(env_id, args.seed, args.fraction), path)
        print(f"{env_id}: {path}")


if __name__ == "__main__":
    main()
