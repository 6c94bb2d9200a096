"""`ControlEnv`: the Gymnasium face of a `ControlProblem`.

Every registered env shares these conventions:

- observation ``[x (n), x* (n), fraction of time left, extras (k)]`` as float32,
  ``2n + 1 + k`` numbers, where the extras are the problem's constant `observation_extras`
  (none, k = 0, on most problems; e.g. the obstacle layout);
- action: a Box in physical units within the problem's bound; finite out-of-range actions are
  clipped (as Gymnasium's Pendulum does); NaN/inf or a wrong shape raise ``ValueError``;
- reward: minus the stage cost, with the terminal cost added on the last step, so the episode
  return is exactly ``-J`` (the problem's `cost` of the same plan);
- ``terminated`` at step N (the horizon is part of the task; time is in the observation), or
  earlier when the problem's `failure_torch` flags the new state (a collision, a crash): then
  the last reward also subtracts the terminal cost of that state and ``failure_penalty``, so
  the return still equals ``-problem.cost`` of the plan (whose rollout freezes there);
- ``info``: ``state`` and ``target`` every step; ``terminal_error``, ``success`` and
  ``failed`` on the last;
- ``reset(seed=..., options={"state": x0, "target": x_star})``, both keys optional.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from trc_gym.experts.base import Expert
from trc_gym.problem import ControlProblem, check_array

ACTION_DTYPE = np.float32  # the action space's dtype: every action a user steps is rounded to it


class ControlEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array"], "render_fps": 10}
    problem_class: ClassVar[type[ControlProblem]]
    expert_class: ClassVar[type[Expert]]  # the solver whose plans define the optimum

    def __init__(self, render_mode: str | None = None, **problem_kwargs: Any):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        self.render_mode = render_mode
        self.problem = self.problem_class(**problem_kwargs)
        p = self.problem
        n_obs = 2 * p.n_state + 1 + np.size(p.observation_extras())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n_obs,), np.float32)
        self.action_space = gym.spaces.Box(p.u_low.astype(ACTION_DTYPE),
                                           p.u_high.astype(ACTION_DTYPE), dtype=ACTION_DTYPE)
        self.state = np.zeros(p.n_state)
        self.target = np.zeros(p.n_state)
        self.step_index = 0
        self.done = False  # the episode ended (step N or a failure): step() needs a reset
        self.trajectory: list[np.ndarray] = []
        self.screen = None  # pygame window, human mode only

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"state", "target"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; use 'state', 'target'")
        p = self.problem
        if options.get("state") is not None:
            self.state = p.check_states(options["state"], "options['state']", batch=1)[0]
        else:
            self.state = p.sample_initial_states(self.np_random, 1)[0]
        if options.get("target") is not None:
            self.target = p.check_states(options["target"], "options['target']", batch=1)[0]
        else:
            self.target = p.sample_targets(self.np_random, 1)[0]
        self.step_index = 0
        self.done = False
        self.trajectory = [self.state]
        self.last_control = self.resting_control()  # the last step's clipped control (drawing)
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info()

    def resting_control(self) -> np.ndarray:
        """The control shown before the first step (zero, clipped into the bound)."""
        return np.clip(np.zeros(self.problem.n_control), self.problem.u_low, self.problem.u_high)

    def episode_info(self, states: np.ndarray) -> dict:
        """Extra entries of the last step's info: the problem's `episode_measures` of the
        episode's states ``[1, N+1, n]`` (padded after a failure), e.g. Rocket's fuel_used."""
        return {k: float(v[0]) for k, v in self.problem.episode_measures(states).items()}

    def step(self, action):
        p = self.problem
        if self.done or self.step_index >= p.horizon:
            raise RuntimeError("the episode has ended (step N reached or failed): call reset()")
        u = check_array(action, "action", (p.n_control,))
        u = self.last_control = np.clip(u, p.u_low, p.u_high)
        reward = -float(p.stage_cost(self.state[None], self.target[None], u[None])[0])
        self.state = p.step(self.state[None], u[None])[0]
        self.step_index += 1
        self.trajectory.append(self.state)
        failed = bool(p.failed(self.state[None], self.step_index)[0])
        terminated = self.done = self.step_index == p.horizon or failed
        info = self._info()
        if terminated:
            reward -= float(p.terminal_cost(self.state[None], self.target[None])[0])
            reward -= p.failure_penalty if failed else 0.0
            # The batched rollout freezes a failed trajectory: pad to N+1 states the same way.
            padded = self.trajectory + [self.state] * (p.horizon - self.step_index)
            states = np.stack(padded)[None]
            info["failed"] = failed
            info["terminal_error"] = float(p.terminal_error(self.state[None], self.target[None])[0])
            info["success"] = bool(p.success(states, self.target[None])[0])
            info.update(self.episode_info(states))
        if self.render_mode == "human":
            self.render()
        return self._observation(), reward, terminated, False, info

    def _observation(self) -> np.ndarray:
        return observations(self.problem, self.state[None], self.target[None],
                            self.step_index)[0]

    def _info(self) -> dict[str, Any]:
        return {"state": self.state.copy(), "target": self.target.copy()}

    # ------------------------------------------------------------------ rendering
    def draw(self, canvas) -> None:
        """Draw the current state and target on a `rendering.Canvas` (per env)."""
        raise NotImplementedError

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        from trc_gym.envs.rendering import Canvas

        canvas = Canvas(*self.view)
        self.draw(canvas)
        canvas.time_bar((self.problem.horizon - self.step_index) / self.problem.horizon)
        if self.render_mode == "rgb_array":
            return canvas.array()
        self.screen = canvas.show(self.screen, self.metadata["render_fps"])
        return None

    view: ClassVar[tuple[float, float, float, float]] = (-4.0, 4.0, -4.0, 4.0)  # world box drawn

    def close(self):
        if self.screen is not None:
            import pygame

            pygame.display.quit()
            pygame.quit()
            self.screen = None


def observations(problem: ControlProblem, x: np.ndarray, target: np.ndarray,
                 step_index: int) -> np.ndarray:
    """The env's observations ``[B, 2n+1+k]`` (float32) of states ``x [B, n]`` and targets
    ``target [B, n]`` after ``step_index`` steps: ``[x, x*, fraction of time left, extras]``."""
    time_left = np.full((len(x), 1), (problem.horizon - step_index) / problem.horizon)
    extras = np.asarray(problem.observation_extras(), dtype=np.float64).reshape(1, -1)
    return np.concatenate([x, target, time_left, np.repeat(extras, len(x), axis=0)],
                          axis=1).astype(np.float32)


def observation_parts(obs: np.ndarray, n_state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split observations ``[B, 2n+1+k]`` into ``x [B, n]``, ``x* [B, n]``, time left ``[B]``
    (the constant extras after them are the problem's `observation_extras`)."""
    obs = np.asarray(obs, dtype=np.float64)
    return obs[..., :n_state], obs[..., n_state:2 * n_state], obs[..., 2 * n_state]
