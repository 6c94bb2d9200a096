"""trc_gym: optimal-control problems as registered Gymnasium environments, their experts,
demonstration datasets and the one evaluation harness every policy is judged by."""

from __future__ import annotations

import numpy as np

from trc_gym.envs import ENV_ENTRY_POINTS, make_expert, make_problem, register_envs
from trc_gym.evaluation import evaluate, format_table, held_out_starts
from trc_gym.problem import ControlProblem, LinearProblem

__version__ = "0.1.0"

register_envs()
ENV_IDS: tuple[str, ...] = tuple(ENV_ENTRY_POINTS)


def expert_plan(env_id: str, x0: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """The expert's plans ``U [B, N, m]`` from starts ``x0 [B, n]`` to ``target [B, n]`` (or one
    ``[n]`` target for all; default the problem's default target)."""
    expert = make_expert(env_id)
    x0 = expert.problem.check_states(x0, "x0")
    if target is None:
        target = expert.problem.sample_targets(np.random.default_rng(0), len(x0))
    return expert.plan(x0, target)


__all__ = ["ENV_IDS", "ControlProblem", "LinearProblem", "__version__", "evaluate",
           "expert_plan", "format_table", "held_out_starts", "make_expert", "make_problem"]
