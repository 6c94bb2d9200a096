"""`ControlVectorEnv`: many copies of a registered env, stepped in one batched torch call.

    envs = gym.make_vec("TRC-DoubleIntegrator-v0", num_envs=4096,
                        vectorization_mode="vector_entry_point", device="cpu")

It reproduces ``SyncVectorEnv`` over ``gym.make(env_id)`` (`ControlEnv`'s conventions, see
`trc_gym.envs.base`): the same observations, rewards, terminations and infos from the same
seeds and actions, with Gymnasium 1.x's ``AutoresetMode.NEXT_STEP`` (a sub-env that ended is
reset by the next ``step``, whose action it ignores: reward 0, not terminated, not truncated).
States, targets, step counts and the episodes' trajectories live on ``device`` as tensors; the
dynamics, cost and failure test are the problem's own torch functions, one call each per step
for every sub-env at once. Each sub-env draws its starts from its own ``np.random.Generator``
(seeded ``seed + i``, as ``SyncVectorEnv`` seeds its envs), the only per-env Python loop, and
only where sub-envs reset.

Not reproduced: rendering (``render_mode`` must be None) and the ``reset_mask`` infos' values of
the envs not reset (they hold the current state rather than zeros; their masks are False).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from trc_gym.checks import check_number
from trc_gym.devices import resolve_device
from trc_gym.envs import ENV_ENTRY_POINTS, env_class, env_name
from trc_gym.envs.base import ControlEnv
from trc_gym.problem import check_array

# `ControlEnv`'s methods that this class reproduces batched: an env overriding one of them
# behaves in a way the batched step does not know, so it cannot be vectorized here.
REPRODUCED_METHODS = ("reset", "step", "_observation", "_info", "episode_info")
RESET_OPTIONS = ("state", "target", "reset_mask")


def make_vector_env(env_id: str, num_envs: int = 1, **kwargs: Any) -> ControlVectorEnv:
    """`ControlVectorEnv` of the env registered as ``env_id`` (kwargs: ``device``,
    ``render_mode``, ``max_episode_steps`` and the problem's options)."""
    return ControlVectorEnv(env_class(env_id), num_envs=num_envs, **kwargs)


def __getattr__(name: str) -> Any:
    """``make_<env name>`` (e.g. ``make_DoubleIntegrator``): `make_vector_env` of that env id,
    the ``vector_entry_point`` `trc_gym.envs.register_envs` registers each id with."""
    ids = {f"make_{env_name(env_id)}": env_id for env_id in ENV_ENTRY_POINTS}
    if name in ids:
        return functools.partial(make_vector_env, ids[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_numpy(t: Tensor) -> np.ndarray:
    """A numpy copy of ``t`` (never a view of a tensor this env updates in place)."""
    return t.cpu().numpy() if t.device.type != "cpu" else t.numpy().copy()


class ControlVectorEnv(VectorEnv):
    """``num_envs`` copies of the `ControlEnv` subclass ``env_class``, its problem made with
    ``problem_kwargs``, on ``device``.

    Shapes (B = ``num_envs``, n states, m controls, N the horizon): actions ``[B, m]`` in the
    problem's units (clipped into the bound; NaN, inf or a wrong shape raise ValueError);
    observations ``[B, 2n+1+k]`` float32; rewards ``[B]`` float64; terminations and truncations
    ``[B]`` bool; info: ``state``, ``target`` ``[B, n]`` every step, ``failed``,
    ``terminal_error``, ``success`` (and the problem's `episode_measures`) for the sub-envs
    that terminated, each with its ``_key`` mask (Gymnasium's vector info convention).
    ``max_episode_steps`` (optional) truncates as ``TimeLimit`` would.

    On a CPU shared with other work, one torch thread (``torch.set_num_threads(1)``, see
    `trc_gym.threads`) is often far faster: the batched step is a few dozen small operations.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": [],
                                          "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, env_class: type[ControlEnv], num_envs: int = 1,
                 device: str | torch.device = "cpu", render_mode: str | None = None,
                 max_episode_steps: int | None = None, **problem_kwargs: Any):
        if not (isinstance(env_class, type) and issubclass(env_class, ControlEnv)):
            raise ValueError(f"env_class must be a ControlEnv subclass, got {env_class!r}")
        overridden = [name for name in REPRODUCED_METHODS
                      if getattr(env_class, name) is not getattr(ControlEnv, name)]
        if overridden:
            raise ValueError(f"{env_class.__name__} overrides ControlEnv's {overridden}: the "
                             f"batched step would not reproduce it (use vectorization_mode="
                             f"'sync')")
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (the vector env does not render), got "
                             f"{render_mode!r}")
        check_number(num_envs, "num_envs", minimum=1, integer=True)
        if max_episode_steps is not None:
            check_number(max_episode_steps, "max_episode_steps", minimum=1, integer=True)
        self.device = resolve_device(device)
        # One single env: its spaces and its problem (the dynamics, cost and measures).
        self.env = env_class(**problem_kwargs)
        self.problem = p = self.env.problem
        self.num_envs = B = int(num_envs)
        self.max_episode_steps = max_episode_steps
        self.render_mode = None
        self.metadata = {**type(self).metadata, "render_fps": self.env.metadata["render_fps"]}
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self.observation_space = batch_space(self.single_observation_space, B)
        self.action_space = batch_space(self.single_action_space, B)

        f64 = {"dtype": torch.float64, "device": self.device}
        self.state = torch.zeros(B, p.n_state, **f64)  # x [B, n]
        self.target = torch.zeros(B, p.n_state, **f64)  # x* [B, n]
        self.step_index = torch.zeros(B, dtype=torch.int64, device=self.device)  # [B], 0..N
        # Each episode's states so far [B, N+1, n] (success is judged on the whole trajectory).
        self.trajectory = torch.zeros(B, p.horizon + 1, p.n_state, **f64)
        self._extras = torch.as_tensor(np.asarray(p.observation_extras(), dtype=np.float64),
                                       **f64).reshape(1, -1)
        self._env_rows = torch.arange(B, device=self.device)
        self._time_rows = torch.arange(p.horizon + 1, device=self.device)
        self._rngs: list[np.random.Generator | None] = [None] * B
        self._seeds: list[int | None] = [None] * B
        self._autoreset = np.zeros(B, dtype=bool)  # ended last step: reset by the next step
        self._started = False

    # ------------------------------------------------------------------ seeding
    @property
    def np_random(self) -> tuple[np.random.Generator | None, ...]:
        """Each sub-env's generator (None before its first reset), as ``SyncVectorEnv``."""
        return tuple(self._rngs)

    @property
    def np_random_seed(self) -> tuple[int | None, ...]:
        return tuple(self._seeds)

    def _seed_list(self, seed: int | list[int | None] | None) -> list[int | None]:
        """Per-env seeds as ``SyncVectorEnv`` reads them: None, an int ``s`` (``s + i``), or
        a list of ``num_envs`` ints or Nones."""
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed as a list must have num_envs={self.num_envs} entries, got "
                             f"{len(seeds)}")
        return seeds

    # ------------------------------------------------------------------ gym API
    @torch.no_grad()
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-env (or those of ``options["reset_mask"]``, bool ``[B]``).
        ``options["state"]`` / ``["target"]``: ``[B, n]`` (or one ``[n]`` for all) instead of
        the drawn starts / targets, as `ControlEnv.reset` takes them."""
        seeds = self._seed_list(seed)
        options = dict(options or {})
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; use 'state', 'target' "
                             f"or 'reset_mask'")
        mask = self._reset_mask(options.get("reset_mask"))
        p, B = self.problem, self.num_envs
        given = {key: p.check_states(options[key], f"options[{key!r}]", batch=B)
                 for key in ("state", "target") if options.get(key) is not None}
        rows = np.flatnonzero(mask)
        for i in rows:
            if seeds[i] is not None or self._rngs[i] is None:
                self._rngs[i], self._seeds[i] = seeding.np_random(seeds[i])
        x0, target = self._draw(rows, given.get("state"), given.get("target"))
        index = torch.as_tensor(rows, device=self.device)
        self.state[index] = torch.as_tensor(x0, device=self.device)
        self.target[index] = torch.as_tensor(target, device=self.device)
        self.step_index[index] = 0
        self.trajectory[index, 0] = self.state[index]
        self._autoreset[rows] = False
        self._started = True
        return self._observations(), self._info(mask)

    def _reset_mask(self, mask: Any) -> np.ndarray:
        """Which sub-envs a reset resets: bool ``[B]`` (default all; the first reset must
        reset all)."""
        if mask is None:
            return np.ones(self.num_envs, dtype=bool)
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must be a bool array of shape "
                             f"[{self.num_envs}], got {mask.dtype} {list(mask.shape)}")
        if not mask.any():
            raise ValueError("options['reset_mask'] resets no env: set at least one True")
        if not self._started and not mask.all():
            raise ValueError("the first reset must reset every env (no reset_mask)")
        return mask

    def _draw(self, rows: np.ndarray, states: np.ndarray | None = None,
              targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Starts and targets ``[len(rows), n]`` of the sub-envs ``rows``: the given rows of
        ``states`` / ``targets [B, n]``, else drawn from each sub-env's generator, start
        first, then target, exactly as `ControlEnv.reset` draws them."""
        p = self.problem
        x0 = np.empty((len(rows), p.n_state))
        target = np.empty((len(rows), p.n_state))
        for j, i in enumerate(rows):
            rng = self._rngs[i]
            x0[j] = states[i] if states is not None else p.sample_initial_states(rng, 1)[0]
            target[j] = targets[i] if targets is not None else p.sample_targets(rng, 1)[0]
        return x0, target

    @torch.no_grad()
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray, dict[str, Any]]:
        """One step of every sub-env under ``actions [B, m]``; those that ended at the last
        step are reset instead (their actions ignored)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        p, B, dev = self.problem, self.num_envs, self.device
        u = check_array(actions, "actions", (B, p.n_control))  # float32 kept as given
        u = p.clip_controls(torch.as_tensor(u, device=dev))
        x, target = self.state, self.target
        nxt = p.step_torch(x, u)
        step_index = self.step_index + 1
        # Stage cost of (x, u) and terminal cost of the next state, as the env adds them.
        terms = p.cost_terms_torch(torch.stack([x, nxt], dim=1), target, u[:, None])
        failed = p.failure_torch(nxt, step_index) if p.has_failure_states else None
        if failed is None:
            failed = torch.zeros(B, dtype=torch.bool, device=dev)
        terminated = (step_index == p.horizon) | failed
        reward = -(terms["state"][:, 0] + terms["control"][:, 0])
        reward = reward - torch.where(terminated, terms["terminal"], 0.0)
        reward = reward - failed.to(reward.dtype) * p.failure_penalty

        resetting = np.flatnonzero(self._autoreset)
        if resetting.size:  # NEXT_STEP autoreset: new starts, reward 0, not done
            x0, new_target = self._draw(resetting)
            rows = torch.as_tensor(resetting, device=dev)
            nxt = nxt.index_copy(0, rows, torch.as_tensor(x0, device=dev))
            target = target.index_copy(0, rows, torch.as_tensor(new_target, device=dev))
            step_index = step_index.index_fill(0, rows, 0)
            reward = reward.index_fill(0, rows, 0.0)
            terminated = terminated.index_fill(0, rows, False)
            failed = failed.index_fill(0, rows, False)
        self.state, self.target, self.step_index = nxt, target, step_index
        self.trajectory[self._env_rows, step_index] = nxt

        terminated_np = to_numpy(terminated)
        if self.max_episode_steps is None:
            truncated_np = np.zeros(B, dtype=bool)
        else:
            truncated_np = to_numpy(step_index >= self.max_episode_steps)
        self._autoreset = terminated_np | truncated_np
        info = self._info(np.ones(B, dtype=bool))
        if terminated_np.any():
            info.update(self._outcomes(np.flatnonzero(terminated_np), failed))
        return (self._observations(), to_numpy(reward), terminated_np, truncated_np, info)

    # ------------------------------------------------------------------ outputs
    def _observations(self) -> np.ndarray:
        """``[B, 2n+1+k]`` float32 ``[x, x*, fraction of time left, extras]``, as
        `trc_gym.envs.base.observations` makes them."""
        N = self.problem.horizon
        time_left = ((N - self.step_index).to(torch.float64) / N)[:, None]
        extras = self._extras.expand(self.num_envs, -1)
        obs = torch.cat([self.state, self.target, time_left, extras], dim=1)
        return obs.to(torch.float32).cpu().numpy()

    def _info(self, mask: np.ndarray) -> dict[str, Any]:
        """``state`` and ``target [B, n]``, with masks ``mask [B]``."""
        return {"state": to_numpy(self.state), "_state": mask.copy(),
                "target": to_numpy(self.target), "_target": mask.copy()}

    def _outcomes(self, ended: np.ndarray, failed: Tensor) -> dict[str, Any]:
        """The last step's info of the sub-envs ``ended`` (indices): ``failed``,
        ``terminal_error``, ``success`` and the problem's `episode_measures`, each ``[B]`` with its
        ``_key`` mask, judged on each episode's states padded to N+1 after a failure as
        `ControlEnv.step` pads them."""
        p, B = self.problem, self.num_envs
        rows = torch.as_tensor(ended, device=self.device)
        final = self.state[rows]
        after = self._time_rows[None, :] > self.step_index[rows][:, None]  # [T, N+1]
        states = to_numpy(torch.where(after[..., None], final[:, None], self.trajectory[rows]))
        target = to_numpy(self.target[rows])
        mask = np.zeros(B, dtype=bool)
        mask[ended] = True
        values = {"failed": to_numpy(failed[rows]).astype(bool),
                  "terminal_error": p.terminal_error(to_numpy(final), target),
                  "success": np.asarray(p.success(states, target), dtype=bool),
                  **p.episode_measures(states)}  # e.g. Rocket's fuel_used
        info: dict[str, Any] = {}
        for key, value in values.items():
            info[key] = np.zeros(B, dtype=value.dtype)
            info[key][ended] = value
            info[f"_{key}"] = mask.copy()
        return info

    def render(self) -> None:
        """Nothing: the vector env has no render mode."""
        return None

    def close_extras(self, **kwargs: Any) -> None:
        if hasattr(self, "env"):  # not where the constructor raised before making it
            self.env.close()
