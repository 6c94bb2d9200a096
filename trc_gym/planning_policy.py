"""`PlanningPolicy`: the shared face of every policy that writes whole control sequences.

A subclass implements ``plan(x0, target) -> U [B, N, m]``; this base gives it SB3's
``predict(obs, state, episode_start, deterministic) -> (action, state)``, executing the plan
made when the observation says the episode starts (time left is 1): open loop, or, where
`plan_and_gains` returns feedback gains, tracked with them (``u_k + K_k (x_k - xbar_k)``,
clipped into the bound, on the planned states ``xbar``). With ``receding_horizon=True`` it
replans from the current state at every step and applies the first control (model-predictive
control): with the full horizon, or, for a planner that reads the time left (`plans_time_left`),
for the steps left in the episode (shrinking-horizon MPC).
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
        self._gains: np.ndarray | None = None  # [B, N, m, n] their feedback gains, if any
        self._planned_states: np.ndarray | None = None  # [B, N+1, n] their trajectories

    @property
    def plans_time_left(self) -> bool:
        """Whether ``plan`` takes ``time_left [B]`` (the observation's share of the horizon
        left) and plans for the steps left only (its first ``round(time_left N)`` controls)."""
        return False

    @property
    def feedback(self) -> bool:
        """Whether `predict` tracks its plans with feedback gains (`plan_and_gains`), so an
        episode is not the open-loop rollout of its plan."""
        return type(self).plan_and_gains is not PlanningPolicy.plan_and_gains

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Plans ``U [B, N, m]`` from ``x0 [B, n]`` to ``target [B, n]``."""
        raise NotImplementedError

    def plan_and_gains(self, x0: np.ndarray,
                       target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Plans ``U [B, N, m]`` and the feedback gains ``K [B, N, m, n]`` that `predict` tracks
        them with; None (the default): executed open loop."""
        return self.plan(x0, target), None

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
            plans = (self.plan(x, target, time_left=time_left) if self.plans_time_left
                     else self.plan(x, target))
            actions = plans[:, 0]
        else:
            replan = step == 0
            if self._plans is None or len(self._plans) != len(obs):
                self._plans = np.zeros((len(obs), p.horizon, p.n_control))
                self._plan_start = np.zeros(len(obs), dtype=int)
                self._gains = np.zeros((len(obs), p.horizon, p.n_control, p.n_state))
                self._planned_states = np.zeros((len(obs), p.horizon + 1, p.n_state))
                replan[:] = True
            if episode_start is not None:
                replan |= np.asarray(episode_start, dtype=bool).reshape(-1)
            if replan.any():
                plans, gains = self.plan_and_gains(x[replan], target[replan])
                self._plans[replan] = plans
                self._gains[replan] = 0.0 if gains is None else gains
                if gains is not None:
                    self._planned_states[replan] = p.rollout(x[replan], plans)
                self._plan_start[replan] = step[replan]
            rows = np.arange(len(obs))
            index = np.clip(step - self._plan_start, 0, p.horizon - 1)
            actions = self._plans[rows, index]
            if self.feedback:
                deviation = p.state_error_np(x, self._planned_states[rows, index])
                correction = (self._gains[rows, index] @ deviation[..., None])[..., 0]
                actions = np.clip(actions + correction, p.u_low, p.u_high)
        actions = actions.astype(np.float32)
        return (actions[0] if single else actions), None
