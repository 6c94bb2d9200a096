"""TRC-Quadrotor2D-v0: fly a planar quadrotor to a hover point.

## Description
A quadrotor restricted to the vertical x-z plane (the "planar quadrotor" of Tedrake's
Underactuated Robotics, with its parameters): a rigid body of mass ``m`` and moment of inertia
``I`` with two rotors at distance ``L`` either side of its centre, each pushing along the body's
up axis with a thrust in ``[0, u_max]``. Gravity pulls down. The body can only accelerate
sideways by tilting, so the system is nonlinear and underactuated (6 states, 2 controls). The
task is to reach a hover (rest, level) state in N = 60 steps of dt = 0.05 s (3 s). Continuous
dynamics, integrated by RK4 with the thrusts held over each step:

    x''  = -(u1 + u2) sin(th) / m
    z''  =  (u1 + u2) cos(th) / m - g
    th'' =  L (u2 - u1) / I

``th`` is the pitch angle, counter-clockwise positive (th = 0: level), ``u1`` the left rotor's
thrust and ``u2`` the right rotor's. There is no ground: ``z`` is height relative to the target.

## Observation space
``Box(-inf, inf, (13,), float32)``: ``[x, z, th, x', z', th', x*, z*, th*, x'*, z'*, th'*,
fraction of time left]``.

| index | observation               | unit  |
|-------|---------------------------|-------|
| 0, 1  | position x, z             | m     |
| 2     | pitch th                  | rad   |
| 3, 4  | velocity x', z'           | m/s   |
| 5     | pitch rate th'            | rad/s |
| 6-11  | target state (a hover: velocities and pitch 0) | as 0-5 |
| 12    | fraction of time left     | 1 at reset, 0 after the last step |

## Action space
``Box(0, u_max, (2,), float32)`` with ``u_max = m g = 4.768 N`` (thrust-to-weight ratio 2):
the thrusts ``[u1, u2]`` of the left and right rotor in N. Finite out-of-range actions are
clipped into the bound.

## Reward
``-dt (e'Qe + u'Ru)`` each step with ``e = x - x*`` (the pitch error wrapped into
``[-pi, pi)``), ``Q = diag(10, 10, 1, 1, 1, 0.1)``, ``R = 0.1 I`` (per N^2; hovering costs
``dt * 0.1 * 2 * 2.384^2`` per step, a constant part of every plan); the last step also adds
``-e_N' Qf e_N`` with ``Qf = 50 Q``. The episode return is exactly ``-J``.

## Starting state
Uniform over the box ``x, z in [-2, 2] m``, ``th in [-pi/4, pi/4] rad``,
``x', z' in [-1, 1] m/s``, ``th' in [-1, 1] rad/s``. The target is the hover at the origin, or
with ``random_target=True`` a hover at ``x*, z* ~ U[-1, 1] m``; ``reset(options=...)`` sets
either. (Only hover targets, level and at rest, can be held; no other is offered.)

## Episode end
``terminated`` after N = 60 steps. Success: ``||x_N - x*||_2 < 0.1`` (pitch wrapped).

## Expert
Box-constrained iLQR (`trc_gym.experts.ilqr`) started from a gentle cascaded flight controller
(position PD at 1.5 rad/s asking for a tilt and collective thrust, pitch PD at 10 rad/s) flown
closed loop, and from the clipped finite-horizon LQR of the linearisation at the hover (thrusts
``m g / 2`` each); the best plan per start is kept.

## Parameters
| name | value | unit |
|------|-------|------|
| mass m | 0.486 | kg |
| arm L (centre to rotor) | 0.25 | m |
| inertia I | 0.00383 | kg m^2 |
| gravity g | 9.81 | m/s^2 |
| thrust bound u_max (each rotor) | m g = 4.768 | N |
| dt | 0.05 | s |
| horizon N | 60 | steps |
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from trc_gym.envs.base import ControlEnv
from trc_gym.envs.rendering import BODY, DARK, TARGET, WARN
from trc_gym.experts import ILQRExpert, clipped_lqr_plans
from trc_gym.experts.guesses import closed_loop_plans
from trc_gym.problem import ControlProblem, wrap_angle

MASS = 0.486  # kg
ARM = 0.25  # m
INERTIA = 0.00383  # kg m^2
GRAVITY = 9.81  # m/s^2
U_MAX = MASS * GRAVITY  # N per rotor: thrust-to-weight ratio 2
HOVER = 0.5 * MASS * GRAVITY  # N per rotor


class Quadrotor2DProblem(ControlProblem):
    def __init__(self, random_target: bool = False):
        self.random_target = random_target
        Q = np.diag([10.0, 10.0, 1.0, 1.0, 1.0, 0.1])
        dt = 0.05
        super().__init__(
            name="Quadrotor2D",
            state_names=("x", "z", "pitch", "x_velocity", "z_velocity", "pitch_rate"),
            control_names=("left_thrust", "right_thrust"),
            dt=dt, horizon=60, Q=Q, R=0.1 * np.eye(2), Qf=50.0 * Q,
            u_low=[0.0, 0.0], u_high=[U_MAX, U_MAX],
            state_low=[-2.0, -2.0, -math.pi / 4, -1.0, -1.0, -1.0],
            state_high=[2.0, 2.0, math.pi / 4, 1.0, 1.0, 1.0],
            tolerance=0.1, cost_weight=dt,
            error_groups={"position": (0, 1), "pitch": (2,), "velocity": (3, 4, 5)},
            angle_indices=(2,),
        )

    def dynamics(self, x: Tensor, u: Tensor) -> Tensor:
        th = x[..., 2]
        total = u[..., 0] + u[..., 1]
        ax = -total * torch.sin(th) / MASS
        az = total * torch.cos(th) / MASS - GRAVITY
        alpha = ARM * (u[..., 1] - u[..., 0]) / INERTIA
        return torch.stack([x[..., 3], x[..., 4], x[..., 5], ax, az, alpha], dim=-1)

    def state_error(self, x: Tensor, target: Tensor) -> Tensor:
        err = x - target
        return torch.cat([err[..., :2], wrap_angle(err[..., 2:3]), err[..., 3:]], dim=-1)

    def equilibrium_control(self, target: np.ndarray) -> np.ndarray:
        return np.full((len(target), 2), HOVER)

    def sample_targets(self, rng: np.random.Generator, size: int) -> np.ndarray:
        targets = np.zeros((size, 6))
        if self.random_target:
            targets[:, :2] = rng.uniform(-1.0, 1.0, (size, 2))
        return targets


class Quadrotor2DExpert(ILQRExpert):
    def initial_guesses(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """A gentle cascaded flight controller (`cascade_controller`) flown closed loop, and
        the clipped LQR about the hover."""
        return [closed_loop_plans(self.problem, x0, cascade_controller(target)),
                clipped_lqr_plans(self.problem, x0, target)]


def cascade_controller(target: np.ndarray, omega: float = 1.5, omega_pitch: float = 10.0,
                       max_tilt: float = math.pi / 3):
    """The textbook cascaded quadrotor controller, a controller ``(x [B, 6], k) -> u [B, 2]``:
    a critically damped PD law (natural frequency ``omega``, rad/s) asks for an acceleration
    towards the hover at ``target [B, 6]``; the body tilts to point its thrust along it (at
    most ``max_tilt``) with the matching collective thrust, and a faster PD law on the pitch
    (``omega_pitch``) sets the thrust difference. Slow position gains keep it from saturating,
    which makes it a good initial guess from every start of the box."""
    def controller(x: np.ndarray, k: int) -> np.ndarray:
        accel = (omega**2 * (target[:, :2] - x[:, :2])
                 + 2.0 * omega * (target[:, 3:5] - x[:, 3:5]))
        accel[:, 1] = np.maximum(accel[:, 1] + GRAVITY, 0.2 * GRAVITY)  # never ask to fall
        pitch = np.clip(np.arctan2(-accel[:, 0], accel[:, 1]), -max_tilt, max_tilt)
        collective = MASS * np.linalg.norm(accel, axis=1)
        torque = INERTIA * (omega_pitch**2 * (pitch - x[:, 2]) - 2.0 * omega_pitch * x[:, 5])
        return np.stack([collective - torque / ARM, collective + torque / ARM], axis=1) / 2.0

    return controller


class Quadrotor2DEnv(ControlEnv):
    __doc__ = __doc__
    problem_class = Quadrotor2DProblem
    expert_class = Quadrotor2DExpert
    view = (-3.0, 3.0, -3.0, 3.0)

    def draw(self, canvas) -> None:
        """Side view: the path so far, the target hover point (green cross) and the body, its
        rotors and their thrusts (red, 0.1 m per N)."""
        x, z, th = self.state[:3]
        tx, tz = self.target[:2]
        canvas.line((tx - 0.2, tz), (tx + 0.2, tz), TARGET, 3)
        canvas.line((tx, tz - 0.2), (tx, tz + 0.2), TARGET, 3)
        path = [tuple(s[:2]) for s in self.trajectory]
        for a, b in itertools.pairwise(path):
            canvas.line(a, b, (170, 170, 170), 1)
        c, s = math.cos(th), math.sin(th)
        canvas.rect((x, z), 2 * ARM, 0.06, DARK, th)
        canvas.rect((x, z), 0.16, 0.1, BODY, th)
        for side, u in zip((-1.0, 1.0), self.last_control):
            hub = (x + side * ARM * c, z + side * ARM * s)
            canvas.rect((hub[0] - 0.05 * s, hub[1] + 0.05 * c), 0.16, 0.03, BODY, th)
            canvas.line(hub, (hub[0] + 0.1 * u * s, hub[1] - 0.1 * u * c), WARN, 3)

    def resting_control(self) -> np.ndarray:
        return np.full(2, HOVER)  # shown hovering before the first step
