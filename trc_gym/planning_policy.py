"""`PlanningPolicy`: the shared face of every policy that writes whole control sequences.

A subclass implements ``plan(x0, target) -> U [B, N, m]``; this base gives it SB3's
``predict(obs, state, episode_start, deterministic) -> (action, state)``, executing the plan
open loop (the plan is made when the observation says the episode starts, i.e. time left is 1),
or, with ``receding_horizon=True``, replanning from the current state at every step and applying
the first control (model-predictive control with the full horizon).
"""

from __future__ import annotations

import numpy as np

from trc_gym.envs.base import observation_parts
from trc_gym.problem import ControlProblem, check_array


class PlanningPolicy:
    """A policy for the env ``env_id`` (made with ``env_kwargs``), whose problem it plans on."""

    def __init__(self, problem: ControlProblem, env_id: str, env_kwargs: dict | None = None,
                 receding_horizon: bool = False):
        self.problem = problem
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.receding_horizon = receding_horizon
        self._plans: np.ndarray | None = None  # [B, N, m] plans being executed
        self._plan_start: np.ndarray | None = None  # [B] step index each plan was made at

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Plans ``U [B, N, m]`` from ``x0 [B, n]`` to ``target [B, n]``."""
        raise NotImplementedError

    def predict(self, observation: np.ndarray, state=None, episode_start=None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Actions ``[B, m]`` (or ``[m]`` for one observation) for observations ``[B, 2n+1+k]``
        (``k`` = the problem's `observation_extras`, read by no plan: they are constant)."""
        p = self.problem
        obs = check_array(observation, "observation", None)
        single = obs.ndim == 1
        size = 2 * p.n_state + 1 + len(np.asarray(p.observation_extras()).reshape(-1))
        obs = check_array(obs[None] if single else obs, "observation", (-1, size))
        x, target, time_left = observation_parts(obs, p.n_state)
        step = np.clip(np.rint((1.0 - time_left) * p.horizon).astype(int), 0, p.horizon - 1)
        if self.receding_horizon:
            actions = self.plan(x, target)[:, 0]
        else:
            replan = step == 0
            if self._plans is None or len(self._plans) != len(obs):
                self._plans = np.zeros((len(obs), p.horizon, p.n_control))
                self._plan_start = np.zeros(len(obs), dtype=int)
                replan[:] = True
            if episode_start is not None:
                replan |= np.asarray(episode_start, dtype=bool).reshape(-1)
            if replan.any():
                self._plans[replan] = self.plan(x[replan], target[replan])
                self._plan_start[replan] = step[replan]
            index = np.clip(step - self._plan_start, 0, p.horizon - 1)
            actions = self._plans[np.arange(len(obs)), index]
        actions = actions.astype(np.float32)
        return (actions[0] if single else actions), None
