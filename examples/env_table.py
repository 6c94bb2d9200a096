"""Print README's table of registered environments, read off the envs and their problems.

    python examples/env_table.py
"""

from __future__ import annotations

import numpy as np

import trc_gym
from trc_gym.envs import env_class


def _box(low: np.ndarray, high: np.ndarray) -> str:
    if np.all(low == low[0]) and np.all(high == high[0]):
        return f"[{low[0]:g}, {high[0]:g}]^{len(low)}"
    return " x ".join(f"[{lo:g}, {hi:g}]" for lo, hi in zip(low, high))


def env_table() -> str:
    # A table of each env's definition (names, bounds, rules), not of metrics.
    lines = ["| id | state x | action (bound) | observation | horizon | start x0 | success |",
             "|---|---|---|---|---|---|---|"]
    for env_id in trc_gym.ENV_IDS:
        env = env_class(env_id)()
        p = env.problem
        rule = getattr(p, "success_rule", None) or f"‖x_N − x*‖ < {p.tolerance:g}"
        lines.append(
            f"| `{env_id}` | {', '.join(p.state_names)} | {', '.join(p.control_names)} in "
            f"{_box(p.u_low, p.u_high)} | Box({env.observation_space.shape[0]},) | "
            f"N={p.horizon}, dt={p.dt:g} s | {_box(p.state_low, p.state_high)} | {rule} |")
        env.close()
    return "\n".join(lines)


if __name__ == "__main__":
    print(env_table())
