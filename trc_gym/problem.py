"""The control-problem abstraction: the single source of truth for dynamics and cost.

A problem is a finite-horizon optimal-control task: reach a target state ``x*`` from ``x0`` in
``N`` steps of length ``dt`` with bounded controls, minimising

    J(x0, x*, U) = w * sum_{k<N} [e_k' Q e_k + u_k' R u_k] + e_N' Qf e_N,    e_k = x_k - x*

Dynamics are written once, in torch (batched, differentiable); the numpy methods (`step`,
`rollout`, `cost`) are a thin float64 face over the same code, used by the environments, the
experts and the evaluation. Controls outside the bound are clipped inside `step`, exactly as
the environment clips its actions, so a batched rollout and the env's return always agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass(eq=False)
class ControlProblem:
    """Base class of every problem. Subclasses set the fields and override `dynamics` (or
    `discrete_step`), and optionally `state_error`, `sample_targets` and `success`.

    Shapes: states ``[B, n]``, controls ``[B, m]``, plans ``U [B, N, m]``, trajectories
    ``[B, N+1, n]``. Units are the problem's own (documented per env).
    """

    name: str
    state_names: tuple[str, ...]
    control_names: tuple[str, ...]
    dt: float
    horizon: int
    Q: np.ndarray
    R: np.ndarray
    Qf: np.ndarray
    u_low: np.ndarray
    u_high: np.ndarray
    state_low: np.ndarray  # box of initial states (sampled uniformly)
    state_high: np.ndarray
    tolerance: float  # success: ||x_N - x*||_2 < tolerance
    cost_weight: float = 1.0  # w: 1 for discrete problems, dt for integral approximations
    # Groups of state indices whose terminal error is also reported on its own.
    error_groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Added to J when an episode ends early in a failure state (see `failure_torch`).
    failure_penalty: float = 0.0
    # State components that are angles (rad, not wrapped: they count turns). The dynamics and
    # the cost depend on them only through their sine and cosine, so a learned planner reads
    # them that way (`periodic_features`): continuous at +-pi and blind to whole turns.
    angle_indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for key in ("Q", "R", "Qf", "u_low", "u_high", "state_low", "state_high"):
            setattr(self, key, np.asarray(getattr(self, key), dtype=np.float64))
        n, m = self.n_state, self.n_control
        expected = {"Q": (n, n), "R": (m, m), "Qf": (n, n), "u_low": (m,), "u_high": (m,),
                    "state_low": (n,), "state_high": (n,)}
        for key, shape in expected.items():
            if getattr(self, key).shape != shape:
                raise ValueError(f"{self.name}: {key} has shape {getattr(self, key).shape}, "
                                 f"expected {shape}")
        if np.any(self.u_low >= self.u_high):
            raise ValueError(f"{self.name}: empty control bound")
        self._torch_constants: dict[tuple, dict[str, Tensor]] = {}
        # Faster CPU rollouts with the same results, by dtype, where they are set up
        # (`trc_gym.compiled_rollout.compile_rollout`); otherwise the eager loop below.
        self.fast_rollouts: dict[torch.dtype, Callable[[Tensor, Tensor, bool], Tensor]] = {}

    # ------------------------------------------------------------------ sizes
    @property
    def n_state(self) -> int:
        return len(self.state_names)

    @property
    def n_control(self) -> int:
        return len(self.control_names)

    # ------------------------------------------------------------ torch (the truth)
    def constants(self, like: Tensor) -> dict[str, Tensor]:
        """Q, R, Qf and bounds as tensors of ``like``'s dtype and device (cached)."""
        return self.cached_tensors((like.dtype, like.device), like, lambda: {
            k: getattr(self, k) for k in ("Q", "R", "Qf", "u_low", "u_high")})

    def cached_tensors(self, key: tuple, like: Tensor,
                       arrays: Callable[[], dict[str, np.ndarray]]) -> dict[str, Tensor]:
        """``arrays()`` as tensors of ``like``'s dtype and device, made once per ``key``. They
        are made as normal tensors even inside ``torch.inference_mode``: they outlive the call
        that made them, and a later differentiable rollout must be able to use them."""
        if key not in self._torch_constants:
            with torch.inference_mode(False):
                self._torch_constants[key] = {
                    k: torch.as_tensor(v, dtype=like.dtype, device=like.device)
                    for k, v in arrays().items()}
        return self._torch_constants[key]

    def dynamics(self, x: Tensor, u: Tensor) -> Tensor:
        """Continuous-time ``dx/dt = f(x, u)``, ``[B, n], [B, m] -> [B, n]``."""
        raise NotImplementedError(f"{type(self).__name__} defines no dynamics")

    def discrete_step(self, x: Tensor, u: Tensor) -> Tensor:
        """One step of length ``dt`` with ``u`` held constant (RK4 unless overridden)."""
        h = self.dt
        k1 = self.dynamics(x, u)
        k2 = self.dynamics(x + 0.5 * h * k1, u)
        k3 = self.dynamics(x + 0.5 * h * k2, u)
        k4 = self.dynamics(x + h * k3, u)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    def clip_controls(self, u: Tensor) -> Tensor:
        c = self.constants(u)
        return torch.maximum(torch.minimum(u, c["u_high"]), c["u_low"])

    def step_torch(self, x: Tensor, u: Tensor) -> Tensor:
        """Next state from ``x [B, n]`` under ``u [B, m]``, clipped into the bound."""
        return self.discrete_step(x, self.clip_controls(u))

    def state_error(self, x: Tensor, target: Tensor) -> Tensor:
        """``x - x*`` as the cost sees it (problems with angles wrap them here)."""
        return x - target

    def periodic_features(self, x: Tensor, scale: Tensor) -> Tensor:
        """``x [..., n]`` as a network reads it, ``[..., n + len(angle_indices)]``: each
        component divided by ``scale [n]``, except the angles, each replaced by its sine and
        cosine (appended last)."""
        scaled = x / scale
        if not self.angle_indices:
            return scaled
        angles = x[..., list(self.angle_indices)]
        others = [i for i in range(self.n_state) if i not in self.angle_indices]
        return torch.cat([scaled[..., others], torch.sin(angles), torch.cos(angles)], dim=-1)

    def failure_torch(self, x: Tensor, step: int | Tensor) -> Tensor | None:
        """Whether each state ``x [..., n]``, reached after ``step`` steps (1..N; an int, or a
        tensor broadcast against ``x``'s leading dims), ends the episode as a failure (a
        collision, a crash): bool ``[...]``. The env then terminates with
        the terminal cost of that state plus ``failure_penalty``, and the batched rollout
        freezes the trajectory there. Default ``None``: no failure states (episodes always run
        N steps)."""
        return None

    def constraint_margins_torch(self, states: Tensor) -> Tensor | None:
        """Each state's distance to the boundary of each hard constraint ``[..., C]`` of
        ``states [..., n]`` (the problem's units; negative where violated), which a planner
        reads back from its simulated plan (`TinyRecursiveControl.error_features`). Default
        ``None``: no constraints beyond the control box."""
        return None

    @property
    def has_failure_states(self) -> bool:
        """Whether the problem overrides `failure_torch` (episodes may end early)."""
        return type(self).failure_torch is not ControlProblem.failure_torch

    def rollout_torch(self, x0: Tensor, U: Tensor, terminate: bool = True) -> Tensor:
        """States ``[B, N+1, n]`` from ``x0 [B, n]`` under ``U [B, N, m]`` (differentiable).

        On problems with failure states a trajectory that fails stays at its failing state for
        the rest of the horizon (the env ends the episode there), unless ``terminate=False``:
        then the dynamics run on regardless (the smooth trajectory a solver differentiates)."""
        fast = self.fast_rollouts.get(x0.dtype)  # compiled for the CPU
        if (fast is not None and U.shape[1] == self.horizon and U.dtype == x0.dtype
                and x0.device.type == "cpu"):
            return fast(x0, U, terminate)
        states = [x0]
        dead = None  # [B] bool: failed at or before the latest state
        for k in range(U.shape[1]):
            nxt = self.step_torch(states[-1], U[:, k])
            if terminate:
                if dead is not None:
                    nxt = torch.where(dead[:, None], states[-1], nxt)
                failed = self.failure_torch(nxt, k + 1)
                if failed is not None:
                    dead = failed if dead is None else dead | failed
            states.append(nxt)
        return torch.stack(states, dim=1)

    def failed_by_torch(self, states: Tensor, first_step: Tensor | None = None) -> Tensor | None:
        """``dead [B, N+1]``: whether each trajectory has failed at or before each state
        (``dead[:, 0]`` is False: the start never counts); ``None`` without failure states.
        ``first_step [B]``: the episode's step at each trajectory's first state (default 0),
        for trajectories that start mid-episode."""
        if not self.has_failure_states:
            return None
        steps = torch.arange(1, states.shape[1], device=states.device)
        if first_step is not None:
            steps = steps + first_step[:, None]
        flags = self.failure_torch(states[:, 1:], steps)  # every state at once: [B, N]
        dead = torch.cumsum(flags.to(torch.int64), dim=1) > 0
        return torch.cat([torch.zeros_like(dead[:, :1]), dead], dim=1)

    def cost_terms_torch(self, states: Tensor, target: Tensor, U: Tensor) -> dict[str, Tensor]:
        """Per-step cost terms of a trajectory: ``state [B, N]`` (w e'Qe), ``control [B, N]``
        (w u'Ru, with the clipped u the dynamics used) and ``terminal [B]`` (e_N' Qf e_N)."""
        c = self.constants(states)
        err = self.state_error(states, target[:, None, :])
        u = self.clip_controls(U)
        w = self.cost_weight
        return {
            "state": w * quadratic_form(err[:, :-1], c["Q"]),
            "control": w * quadratic_form(u, c["R"]),
            "terminal": quadratic_form(err[:, -1], c["Qf"]),
        }

    def cost_torch(self, x0: Tensor, target: Tensor, U: Tensor,
                   steps_left: Tensor | None = None) -> Tensor:
        """Total cost ``J [B]`` of plans ``U [B, N, m]`` (differentiable). On problems with
        failure states, as in the env: the stages after a failure cost nothing, the terminal
        cost is taken at the failing state and ``failure_penalty`` is added. ``steps_left
        [B]`` (1..N): each plan is for the last ``steps_left`` steps of an episode, from
        ``x0`` at step ``N - steps_left``; only its first ``steps_left`` controls count, and
        the terminal cost is taken after them (`hold_after`)."""
        states = self.rollout_torch(x0, U)
        if steps_left is not None:
            states = self.hold_after(states, steps_left)
            terms = self.cost_terms_torch(states, target, U)
            stages = (terms["state"] + terms["control"]) * self.counted_steps(steps_left, U)
            dead = self.failed_by_torch(states, self.horizon - steps_left)
            if dead is None:
                return stages.sum(1) + terms["terminal"]
            return ((stages * (~dead[:, :-1]).to(states.dtype)).sum(1) + terms["terminal"]
                    + self.failure_penalty * dead[:, -1].to(states.dtype))
        terms = self.cost_terms_torch(states, target, U)
        dead = self.failed_by_torch(states)
        if dead is None:
            return terms["state"].sum(1) + terms["control"].sum(1) + terms["terminal"]
        alive = (~dead[:, :-1]).to(states.dtype)
        return (((terms["state"] + terms["control"]) * alive).sum(1) + terms["terminal"]
                + self.failure_penalty * dead[:, -1].to(states.dtype))

    @staticmethod
    def hold_after(states: Tensor, steps_left: Tensor) -> Tensor:
        """``states [B, N+1, n]``, each trajectory held at its state after ``steps_left [B]``
        steps from then on: a plan for the time left in an episode ends there."""
        steps = torch.arange(states.shape[1], device=states.device)
        final = states.gather(1, steps_left[:, None, None].expand(-1, 1, states.shape[2]))
        return torch.where((steps <= steps_left[:, None])[..., None], states, final)

    @staticmethod
    def counted_steps(steps_left: Tensor, like: Tensor) -> Tensor:
        """``[B, N]`` (``like``'s dtype): 1 for each of a plan's first ``steps_left [B]``
        steps (those that remain in the episode), 0 after them."""
        steps = torch.arange(like.shape[1], device=like.device)
        return (steps < steps_left[:, None]).to(like.dtype)

    def jacobians(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Jacobians of `discrete_step` (no clipping) at ``x [B, n], u [B, m]``:
        ``A [B, n, n] = d x+ / d x`` and ``B [B, n, m] = d x+ / d u``, by autodiff."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        u = torch.as_tensor(np.asarray(u, dtype=np.float64))

        def one(xi: Tensor, ui: Tensor) -> Tensor:
            return self.discrete_step(xi[None], ui[None])[0]

        jac_x, jac_u = torch.func.vmap(torch.func.jacrev(one, argnums=(0, 1)))(x, u)
        return jac_x.numpy(), jac_u.numpy()

    # ------------------------------------------------------------ numpy face (float64)
    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        x = self.check_states(x, "x")
        u = check_array(u, "u", (x.shape[0], self.n_control))
        with torch.no_grad():
            return self.step_torch(torch.from_numpy(x), torch.from_numpy(u)).numpy()

    def rollout(self, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
        """States ``[B, N+1, n]`` of plans ``U [B, N, m]`` from ``x0 [B, n]``."""
        x0, U = self.check_plan(x0, U)
        with torch.no_grad():
            return self.rollout_torch(torch.from_numpy(x0), torch.from_numpy(U)).numpy()

    def cost(self, x0: np.ndarray, target: np.ndarray, U: np.ndarray) -> np.ndarray:
        """Total cost ``J [B]`` (the env's episode return is exactly ``-J``)."""
        x0, U = self.check_plan(x0, U)
        target = self.check_states(target, "target", batch=x0.shape[0])
        with torch.no_grad():
            return self.cost_torch(*(torch.from_numpy(a) for a in (x0, target, U))).numpy()

    def stage_cost(self, x: np.ndarray, target: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``w (e'Qe + u'Ru)`` for one step, ``[B]`` (u clipped as in `step`)."""
        x = self.check_states(x, "x")
        target = self.check_states(target, "target", batch=x.shape[0])
        u = check_array(u, "u", (x.shape[0], self.n_control))
        states = np.stack([x, x], axis=1)  # one step: only the first state enters the stage
        with torch.no_grad():
            terms = self.cost_terms_torch(torch.from_numpy(states), torch.from_numpy(target),
                                          torch.from_numpy(u)[:, None])
        return (terms["state"] + terms["control"])[:, 0].numpy()

    def terminal_cost(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        x = self.check_states(x, "x")
        target = self.check_states(target, "target", batch=x.shape[0])
        with torch.no_grad():
            err = self.state_error(torch.from_numpy(x), torch.from_numpy(target))
            return torch.einsum("bi,ij,bj->b", err, self.constants(err)["Qf"], err).numpy()

    def state_error_np(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """`state_error` on numpy arrays (same shapes in and out)."""
        with torch.no_grad():
            return self.state_error(torch.as_tensor(x), torch.as_tensor(target)).numpy()

    def terminal_error(self, final_states: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``||x_N - x*||_2`` per episode ``[B]`` (angles wrapped as in the cost)."""
        return np.linalg.norm(self.state_error_np(final_states, target), axis=-1)

    def success(self, states: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Whether each trajectory ``[B, N+1, n]`` succeeds (terminal error < tolerance;
        problems with extra conditions override this)."""
        return self.terminal_error(states[:, -1], target) < self.tolerance

    def constraint_violations(self, states: np.ndarray) -> np.ndarray:
        """Whether each trajectory ``[B, N+1, n]`` breaks a state constraint (none by default)."""
        return np.zeros(len(states), dtype=bool)

    def episode_measures(self, states: np.ndarray) -> dict[str, np.ndarray]:
        """Per-episode quantities ``[B]`` of trajectories ``[B, N+1, n]`` that the evaluation
        reports beside the cost (their means, under these names); none by default."""
        return {}

    def failed(self, x: np.ndarray, step: int) -> np.ndarray:
        """`failure_torch` on numpy states ``[B, n]`` reached after ``step`` steps: ``[B]``."""
        x = self.check_states(x, "x")
        with torch.no_grad():
            flags = self.failure_torch(torch.from_numpy(x), step)
        return np.zeros(len(x), dtype=bool) if flags is None else flags.numpy().astype(bool)

    def alive_mask(self, states: np.ndarray) -> np.ndarray:
        """``[B, N]``: whether each step of trajectories ``[B, N+1, n]`` is still taken (no
        failure before it); all True on problems without failure states."""
        with torch.no_grad():
            dead = self.failed_by_torch(torch.as_tensor(np.asarray(states, dtype=np.float64)))
        if dead is None:
            return np.ones((len(states), np.shape(states)[1] - 1), dtype=bool)
        return ~dead[:, :-1].numpy()

    def observation_extras(self) -> np.ndarray:
        """Constant numbers ``[k]`` the env appends to every observation after
        ``[x, x*, time left]`` (e.g. an obstacle layout). Default: none."""
        return np.zeros(0)

    # ------------------------------------------------------------------ sampling
    def sample_initial_states(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.uniform(self.state_low, self.state_high, size=(size, self.n_state))

    def sample_targets(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Default target: the origin. Problems with other targets override this."""
        return np.zeros((size, self.n_state))

    # ------------------------------------------------------------------ equilibria
    def equilibrium_control(self, target: np.ndarray) -> np.ndarray:
        """The control ``[B, m]`` that holds each rest state ``target [B, n]`` in place (the
        LQR experts linearise there). Default: zero; problems such as a hovering quadrotor
        override it."""
        return np.zeros((len(target), self.n_control))

    # ------------------------------------------------------------------ checks
    def check_states(self, x: np.ndarray, name: str, batch: int | None = None) -> np.ndarray:
        """``x`` as float64 ``[B, n]`` (a single ``[n]`` state is broadcast to ``batch``),
        within float32's range (the observation and the planners are float32)."""
        x = check_array(x, name, None, max_abs=FLOAT32_MAX)
        if x.ndim == 1 and x.shape == (self.n_state,):
            x = np.broadcast_to(x, (batch or 1, self.n_state)).copy()
        return check_array(x, name, (batch if batch is not None else -1, self.n_state))

    def check_plan(self, x0: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x0 = self.check_states(x0, "x0")
        U = check_array(U, "U", (x0.shape[0], self.horizon, self.n_control))
        return x0, U


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_array(a: np.ndarray, name: str, shape: tuple[int, ...] | None,
                max_abs: float | None = None) -> np.ndarray:
    """``a`` as a finite float64 array of ``shape`` (-1 matches any size; None: any shape)
    with no entry beyond ``max_abs`` in magnitude, else ValueError naming ``name``."""
    if np.iscomplexobj(a):
        raise ValueError(f"{name} must be real, got complex values")
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(a).__name__}") from exc
    if shape is not None and (a.ndim != len(shape)
                              or any(s not in (-1, d) for s, d in zip(shape, a.shape))):
        want = "[" + ", ".join("B" if s == -1 else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(a.shape)}, expected {want}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    if max_abs is not None and a.size and np.abs(a).max() > max_abs:
        raise ValueError(f"{name} has an entry of magnitude {np.abs(a).max():.3g}, beyond "
                         f"{max_abs:.3g} (float32's range)")
    return a


def quadratic_form(v: Tensor, M: Tensor) -> Tensor:
    """``v' M v`` over the last dimension: ``v [..., n], M [n, n] -> [...]``. One matrix
    product over all leading dimensions, then a row sum: several times faster, forward and
    backward, than the batched products `torch.einsum` makes of it."""
    return ((v @ M) * v).sum(-1)


def wrap_angle(a: Tensor) -> Tensor:
    """Angles into ``[-pi, pi)`` (derivative 1 almost everywhere), for `state_error`."""
    return torch.remainder(a + math.pi, 2.0 * math.pi) - math.pi


def stacked_prediction(A: np.ndarray, B: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``Phi [(N+1) n, n]`` and ``Gamma [(N+1) n, N m]`` with ``vec(X) = Phi x0 + Gamma vec(U)``
    for ``x+ = A x + B u``."""
    n, m = B.shape
    powers = [np.eye(n)]
    for _ in range(horizon):
        powers.append(A @ powers[-1])
    Phi = np.concatenate(powers)
    Gamma = np.zeros(((horizon + 1) * n, horizon * m))
    for k in range(1, horizon + 1):
        for j in range(k):
            Gamma[k * n:(k + 1) * n, j * m:(j + 1) * m] = powers[k - 1 - j] @ B
    return Phi, Gamma


class LinearProblem(ControlProblem):
    """``x+ = A x + B u``: subclasses set ``A [n, n]`` and ``B [n, m]`` before calling
    ``super().__init__``."""

    A: np.ndarray
    B: np.ndarray

    def linear_constants(self, like: Tensor, steps: int) -> dict[str, Tensor]:
        """``A``, ``B`` and the stacked ``Phi``, ``Gamma`` of `stacked_prediction` for
        ``steps`` steps, as tensors like ``like`` (cached)."""
        def arrays() -> dict[str, np.ndarray]:
            Phi, Gamma = stacked_prediction(self.A, self.B, steps)
            return {"A": self.A, "B": self.B, "Phi": Phi, "Gamma": Gamma}

        return self.cached_tensors((like.dtype, like.device, "linear", steps), like, arrays)

    def discrete_step(self, x: Tensor, u: Tensor) -> Tensor:
        c = self.linear_constants(x, 1)
        return x @ c["A"].T + u @ c["B"].T

    def rollout_torch(self, x0: Tensor, U: Tensor, terminate: bool = True) -> Tensor:
        """The same states as stepping, in one product: ``X = Phi x0 + Gamma vec(clip(U))``
        (stepped, as the base class does, where failure states can end a trajectory)."""
        if terminate and self.has_failure_states:
            return super().rollout_torch(x0, U, terminate)
        B, steps = U.shape[:2]
        c = self.linear_constants(x0, steps)
        controls = self.clip_controls(U).reshape(B, steps * self.n_control)
        flat = x0 @ c["Phi"].T + controls @ c["Gamma"].T
        return flat.view(B, steps + 1, self.n_state)
