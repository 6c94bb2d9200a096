"""An animated GIF of a policy flying one held-out episode, frame by frame from the env's
``render_mode="rgb_array"``, stepped through ``gym.make`` as a user steps it.

    python examples/animate.py runs/Rocket/trc_rl.pt                    # -> runs/Rocket/trc_rl.gif
    python examples/animate.py runs/Quadrotor2D/trc_bc.pt --mpc --start 3
    python examples/animate.py expert --env TRC-CartPole-v0 --out docs/envs/cartpole_expert.gif

The policy is any that ``trc evaluate`` takes (a TRC checkpoint, an SB3 agent or run folder,
expert, random or zero); ``--start K`` picks the K-th of the evaluation's held-out starts
(`trc_gym.held_out_starts`), so the episode is one of the table's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
from PIL import Image

from trc_gym.cli import load_any_policy
from trc_gym.envs import env_name, make_problem
from trc_gym.evaluation import held_out_starts
from trc_gym.files import atomic_write


def episode_frames(policy, env_id: str, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
    """The ``[H, W, 3]`` uint8 frames of one episode of ``policy`` from ``x0`` to ``target``
    (``[n]`` each): the first state's, then one after each step, to the episode's end."""
    env = gym.make(env_id, render_mode="rgb_array")
    obs, _ = env.reset(options={"state": x0, "target": target})
    frames, done, first = [env.render()], False, True
    while not done:
        action, _ = policy.predict(obs[None], episode_start=np.array([first]),
                                   deterministic=True)
        obs, _, terminated, truncated, _ = env.step(np.asarray(action).reshape(-1))
        frames.append(env.render())
        done, first = terminated or truncated, False
    env.close()
    return frames


def save_gif(frames: list[np.ndarray], path: Path, seconds_per_frame: float) -> None:
    """Write ``frames`` to ``path`` as a looping GIF shown at the env's own pace, atomically."""
    images = [Image.fromarray(frame) for frame in frames]
    milliseconds = max(20, round(1000 * seconds_per_frame))  # browsers slow faster GIFs down

    def write(tmp: str) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=milliseconds, loop=0)

    atomic_write(path, write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="TRC checkpoint, SB3 agent or run folder, expert, "
                                       "random or zero")
    parser.add_argument("--env", default=None, help="env id (default: the policy's own)")
    parser.add_argument("--mpc", action="store_true", help="a planner replans at every step")
    parser.add_argument("--start", type=int, default=0, help="which held-out start (0, 1, ...)")
    parser.add_argument("--out", type=Path, default=None,
                        help="GIF path (default: a checkpoint's path with .gif, else "
                             "<env name>_<policy>.gif here)")
    args = parser.parse_args()
    if args.start < 0:
        parser.error(f"--start must be >= 0, got {args.start}")
    try:
        policy, env_id = load_any_policy(args.policy, args.env, mpc=args.mpc)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    x0, target = held_out_starts(env_id, args.start + 1)
    frames = episode_frames(policy, env_id, x0[-1], target[-1])
    source = Path(args.policy)
    out = args.out or (source.with_suffix(".gif") if source.is_file()
                       else Path(f"{env_name(env_id)}_{source.name}.gif"))
    save_gif(frames, out, make_problem(env_id).dt)
    print(f"{env_id}: {len(frames)} frames of start {args.start} -> {out}")


if __name__ == "__main__":
    main()
