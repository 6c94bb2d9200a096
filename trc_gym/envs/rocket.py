"""TRC-Rocket-v0: 3-DOF powered descent of a Mars lander onto a pad.

## Description
A lander, modelled as a point mass that burns fuel, must touch down softly on the pad at the
origin after exactly N = 40 steps of dt = 1 s (a fixed-time powered descent, as in the
convex-guidance literature). Its engine produces a thrust vector ``T``; Mars' gravity pulls
it down. Continuous dynamics, integrated by RK4 with the thrust held over each step:

    r' = v,        v' = T / m + g,        m' = -||T||_eps / (Isp g0)

with ``g = [0, 0, -3.71] m/s^2``, ``Isp = 200.7 s``, ``g0 = 9.81 m/s^2`` and the smooth norm
``||T||_eps = sqrt(T'T + eps)``, ``eps = 1e-6 kN^2`` (differentiable at zero thrust; it
burns at most 0.5 g of fuel per second more than the exact norm, 20 g per episode). Units are
chosen so that these equations hold as written: thrust in kN and mass in tonnes
(kN / t = m/s^2, kN / (m/s) = t/s).
``z`` is the altitude above the flat ground; the pad is at ``x = y = 0``.

The thrust bound is a **per-axis box** (so the iLQR expert stays box-constrained):
``Tx, Ty in [-5, 5] kN`` (lateral), ``Tz in [0, 16] kN`` (vertical: the engine cannot pull
down). The largest thrust, at a corner, is 17.5 kN, a thrust-to-weight ratio of about 2.6 on
Mars at the lightest start. Fuel cannot run out within the horizon (the most the engine can
burn in 40 s is 0.36 t; the lightest start carries 1.8 t; a dry mass is not modelled).

## Observation space
``Box(-inf, inf, (15,), float32)``: ``[x, y, z, vx, vy, vz, m, x*, ..., m*, fraction of time
left]``.

| index | observation                        | unit |
|-------|------------------------------------|------|
| 0-2   | position x, y, z (z: altitude)     | m    |
| 3-5   | velocity vx, vy, vz                | m/s  |
| 6     | mass m (wet)                       | t    |
| 7-13  | target: the pad at rest, all 0 (the target mass is not used: mass is free) | as 0-6 |
| 14    | fraction of time left              | 1 at reset, 0 after the last step |

## Action space
``Box([-5, -5, 0], [5, 5, 16], (3,), float32)``: the thrust ``[Tx, Ty, Tz]`` in kN. Finite
out-of-range actions are clipped into the box.

## Reward
``-dt (e'Qe + T'RT)`` each step with ``e = x - x*`` (the mass component set to 0: the
landing mass is free), ``Q = 0`` (no running state cost), ``R = 0.01 I`` per kN^2 (a smooth
proxy of fuel); the last step also adds ``-e_N' Qf e_N`` with
``Qf = diag(10, 10, 10, 10, 10, 10, 0)``. A **crash** (altitude below 0 before the last step)
ends the episode at once: that step also subtracts the terminal cost of the crash state and a
penalty of 1000. The episode return is exactly ``-J`` (`problem.cost` of the plan, whose
batched rollout freezes a crashed trajectory at its crash state).

## Starting state
Uniform over the box: ``x, y in [-300, 300] m``, ``z in [400, 900] m``,
``vx, vy in [-20, 20] m/s``, ``vz in [-45, -15] m/s``, ``m in [1.8, 2.0] t``. The target is
the pad at rest (all zeros); ``reset(options=...)`` sets the start (or a target elsewhere).

## Episode end
``terminated`` after N = 40 steps, or earlier on a crash. **Success** (touchdown): at the last
state the altitude is within 1 m of the ground (``|z_N| < 1 m``), the horizontal distance to
the pad is under 5 m, the speed under 2 m/s, and no earlier state was below the ground. The
last step's ``info["fuel_used"]`` is the fuel burnt in kg; from a trajectory ``[B, N+1, 7]``
it is ``problem.fuel_used(states)``.

## Expert
Box-constrained iLQR (`trc_gym.experts.ilqr`) minimising J plus a quadratic ground barrier
(``w max(0, margin - z_k)^2`` for ``k < N``), started from the energy-optimal
fixed-time guidance law (``a = 6 (r* - r - v t_go) / t_go^2 - 2 (v* - v) / t_go - g``) flown
closed loop with its thrust clipped, and from a constant hover thrust; the best plan per start
is kept, then solved again with the margin shrunk and the weight raised (continuation:
``(margin, w)`` = (0.5 m, 1e3), (0.1 m, 1e4), (0.02 m, 1e6)).

## Parameters
| name | value | unit |
|------|-------|------|
| gravity g | (0, 0, -3.71) | m/s^2 |
| specific impulse Isp | 200.7 | s |
| standard gravity g0 | 9.81 | m/s^2 |
| lateral thrust bound (Tx, Ty) | [-5, 5] | kN |
| vertical thrust bound Tz | [0, 16] | kN |
| dt | 1.0 | s |
| horizon N | 40 | steps |
| crash penalty | 1000 | - |
| touchdown: altitude, pad radius, speed | 1, 5, 2 | m, m, m/s |
| expert barrier (margin, weight) stages | (0.5, 1e3), (0.1, 1e4), (0.02, 1e6) | m, per m^2 |
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from trc_gym.envs.base import ControlEnv
from trc_gym.envs.rendering import BODY, DARK, TARGET, WARN
from trc_gym.experts import ILQRExpert
from trc_gym.experts.guesses import closed_loop_plans
from trc_gym.problem import ControlProblem

GRAVITY = np.array([0.0, 0.0, -3.71])  # m/s^2 (Mars)
ISP = 200.7  # s
G0 = 9.81  # m/s^2
EXHAUST = ISP * G0  # m/s: mass flow [t/s] = thrust [kN] / EXHAUST
NORM_EPS = 1e-6  # kN^2: smooths ||T|| at zero thrust
T_LAT, T_VERT = 5.0, 16.0  # kN
TOUCHDOWN_ALTITUDE, PAD_RADIUS, LANDING_SPEED = 1.0, 5.0, 2.0  # m, m, m/s
CRASH_PENALTY = 1000.0
# Expert only: the ground barrier's (margin m, weight per m^2) stages.
BARRIER_STAGES = ((0.5, 1e3), (0.1, 1e4), (0.02, 1e6))


class RocketProblem(ControlProblem):
    # README's env table (markdown-escaped bars):
    success_rule = r"touchdown: \|z_N\| < 1 m, < 5 m from the pad, speed < 2 m/s, no crash"

    def __init__(self):
        dt = 1.0
        super().__init__(
            name="Rocket", state_names=("x", "y", "z", "vx", "vy", "vz", "mass"),
            control_names=("thrust_x", "thrust_y", "thrust_z"),
            dt=dt, horizon=40, Q=np.zeros((7, 7)), R=0.01 * np.eye(3),
            Qf=np.diag([10.0] * 6 + [0.0]),
            u_low=[-T_LAT, -T_LAT, 0.0], u_high=[T_LAT, T_LAT, T_VERT],
            state_low=[-300.0, -300.0, 400.0, -20.0, -20.0, -45.0, 1.8],
            state_high=[300.0, 300.0, 900.0, 20.0, 20.0, -15.0, 2.0],
            tolerance=PAD_RADIUS, cost_weight=dt, failure_penalty=CRASH_PENALTY,
            error_groups={"position": (0, 1, 2), "velocity": (3, 4, 5)},
        )

    # ------------------------------------------------------------------ dynamics and cost
    def dynamics(self, x: Tensor, u: Tensor) -> Tensor:
        g = torch.as_tensor(GRAVITY, dtype=x.dtype, device=x.device)
        mass = x[..., 6:7]
        thrust = torch.sqrt((u * u).sum(-1) + NORM_EPS)
        return torch.cat([x[..., 3:6], u / mass + g, -(thrust / EXHAUST)[..., None]], dim=-1)

    def state_error(self, x: Tensor, target: Tensor) -> Tensor:
        err = x - target
        return torch.cat([err[..., :6], torch.zeros_like(err[..., 6:])], dim=-1)  # mass is free

    def failure_torch(self, x: Tensor, step: int | Tensor) -> Tensor:
        """A crash: below the ground before the last step (the last is judged by success)."""
        return (x[..., 2] < 0.0) & (step < self.horizon)

    # ------------------------------------------------------------------ outcomes
    def success(self, states: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Touchdown on the pad: ``|z_N| < 1 m``, within 5 m of the pad horizontally, speed
        under 2 m/s, never below the ground before the end. ``[B]``."""
        final = np.asarray(states)[:, -1]
        target = np.asarray(target)
        horizontal = np.linalg.norm(final[:, :2] - target[:, :2], axis=1)
        speed = np.linalg.norm(final[:, 3:6] - target[:, 3:6], axis=1)
        return ((np.abs(final[:, 2] - target[:, 2]) < TOUCHDOWN_ALTITUDE)
                & (horizontal < PAD_RADIUS) & (speed < LANDING_SPEED)
                & ~self.constraint_violations(states))

    def constraint_violations(self, states: np.ndarray) -> np.ndarray:
        """Below the ground at any state before the last. ``[B]``."""
        return np.any(np.asarray(states)[:, 1:-1, 2] < 0.0, axis=1)

    def fuel_used(self, states: np.ndarray) -> np.ndarray:
        """Fuel burnt over trajectories ``[B, N+1, 7]``, in kg ``[B]`` (a crashed trajectory
        stops burning at its crash)."""
        states = np.asarray(states)
        return 1000.0 * (states[:, 0, 6] - states[:, -1, 6])

    def episode_measures(self, states: np.ndarray) -> dict[str, np.ndarray]:
        return {"fuel_used": self.fuel_used(states)}

    def sample_targets(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.zeros((size, 7))  # the pad at rest


class RocketExpert(ILQRExpert):
    """iLQR on J plus a ground barrier, from guidance-law and hover guesses."""

    barrier_stages = BARRIER_STAGES

    def clearance_torch(self, states: Tensor) -> Tensor:
        """The altitude of the states before the last ``[B, N-1]`` (the last is judged by
        success)."""
        return states[:, 1:-1, 2]

    def initial_guesses(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """The energy-optimal fixed-time guidance law flown closed loop (thrust clipped into
        the box), and a constant hover thrust."""
        hover = np.zeros((len(x0), self.problem.horizon, 3))
        hover[..., 2] = np.clip(-GRAVITY[2] * x0[:, 6], 0.0, T_VERT)[:, None]
        return [self.guidance_plans(x0, target), hover]

    def guidance_plans(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Plans ``[B, N, 3]`` of the unconstrained minimum-energy guidance law
        ``a = 6 (r* - r - v t_go) / t_go^2 - 2 (v* - v) / t_go - g``, ``T = m a`` (clipped),
        recomputed from the state reached at every step."""
        p = self.problem

        def guidance(x: np.ndarray, k: int) -> np.ndarray:
            t_go = (p.horizon - k) * p.dt
            r, v = x[:, :3], x[:, 3:6]
            accel = (6.0 * (target[:, :3] - r - v * t_go) / t_go**2
                     - 2.0 * (target[:, 3:6] - v) / t_go - GRAVITY)
            return x[:, 6:7] * accel

        return closed_loop_plans(p, x0, guidance)


class RocketEnv(ControlEnv):
    __doc__ = __doc__
    problem_class = RocketProblem
    expert_class = RocketExpert
    view = (-450.0, 450.0, -50.0, 850.0)  # side view (x, z) in m

    def draw(self, canvas) -> None:
        """Side view (x, z): ground, pad (with a flag), the path so far and the lander
        (drawn 40 m tall, pointing along its thrust) with its flame (5 m per kN); top-right
        inset: the top view (x, y) of the path, pad at its centre."""
        ground = (150, 120, 90)
        canvas.polygon([(-450, 0), (450, 0), (450, -50), (-450, -50)], ground)
        canvas.line((-PAD_RADIUS, 0), (PAD_RADIUS, 0), TARGET, 8)  # the pad, and its flag
        canvas.line((0.0, 0.0), (0.0, 60.0), DARK, 2)
        canvas.polygon([(0.0, 60.0), (30.0, 50.0), (0.0, 40.0)], TARGET)
        path = np.stack(self.trajectory)
        for a, b in itertools.pairwise(path):
            canvas.line((a[0], a[2]), (b[0], b[2]), (170, 170, 170), 1)
        x, z = self.state[0], self.state[2]
        axis = np.array([self.last_control[0], self.last_control[2]])
        norm = np.linalg.norm(axis)
        up = axis / norm if norm > 1e-6 else np.array([0.0, 1.0])
        angle = np.arctan2(-up[0], up[1])
        center = (x + 20.0 * up[0], z + 20.0 * up[1])
        canvas.rect(center, 14.0, 40.0, BODY, angle)
        canvas.line((x, z), (x - 5.0 * norm * up[0], z - 5.0 * norm * up[1]), WARN, 4)
        # Inset: top view of [-350, 350]^2 m drawn in the world box [250, 440] x [650, 840].
        def top(px: float, py: float) -> tuple[float, float]:
            return 345.0 + 95.0 * px / 350.0, 745.0 + 95.0 * py / 350.0

        canvas.polygon([top(-350, -350), top(350, -350), top(350, 350), top(-350, 350)],
                       DARK, 1)
        canvas.circle(top(0.0, 0.0), 4.0, TARGET)
        for a, b in itertools.pairwise(path):
            canvas.line(top(a[0], a[1]), top(b[0], b[1]), (170, 170, 170), 1)
        canvas.circle(top(self.state[0], self.state[1]), 5.0, BODY)
