"""Print README's table of registered environments, read off the problems themselves.

    python examples/env_table.py
"""

from __future__ import annotations

import numpy as np

import trc_gym


def _box(low: np.ndarray, high: np.ndarray) -> str:
    if np.all(low == low[0]) and np.all(high == high[0]):
        return f"[{low[0]:g}, {high[0]:g}]^{len(low)}"
    return " x ".join(f"[{lo:g}, {hi:g}]" for lo, hi in zip(low, high))


def env_table() -> str:
    lines = ["| id | state x | action (bound) | observation | horizon | start x0 | success |",
             "|---|---|---|---|---|---|---|"]
    for env_id in trc_gym.ENV_IDS:
        p = trc_gym.make_problem(env_id)
        obs = 2 * p.n_state + 1 + len(getattr(p, "observation_extras", lambda: [])())
        lines.append(
            f"| `{env_id}` | {', '.join(p.state_names)} | {', '.join(p.control_names)} in "
            f"{_box(p.u_low, p.u_high)} | Box({obs},) | N={p.horizon}, dt={p.dt:g} s | "
            f"{_box(p.state_low, p.state_high)} | "
            f"{getattr(p, 'success_rule', None) or f'‖x_N − x*‖ < {p.tolerance:g}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(env_table())
