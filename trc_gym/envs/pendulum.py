"""TRC-Pendulum-v0: swing a torque-limited pendulum up and hold it upright.

## Description
Gymnasium's Pendulum physics: a rod of mass m = 1 kg and length l = 1 m pivots about one end
under gravity g = 10 m/s^2, driven by a torque ``u`` at the pivot. The angle ``th`` is measured
from upright (``th = 0`` is the target, ``th = pi`` hangs down), counter-clockwise positive:

    th'' = 3 g / (2 l) sin(th) + 3 / (m l^2) u.

The torque bound, 2 N m, gives at most 6 rad/s^2 against gravity's 15 rad/s^2: from hanging
the pendulum cannot be lifted directly and must be pumped (two or three swings). Unlike
Gymnasium the angular velocity is not clipped (a smooth model for the gradient-based expert)
and the step is RK4 rather than semi-implicit Euler; the horizon is fixed: N = 100 steps of
dt = 0.05 s (5 s), enough to swing up from any start in the box and settle.

## Observation space
``Box(-inf, inf, (5,), float32)``: ``[th, th', th*, th*' (= 0), fraction of time left]``.

| index | observation               | unit  |
|-------|---------------------------|-------|
| 0     | angle th from upright     | rad (not wrapped: counts turns) |
| 1     | angular velocity th'      | rad/s |
| 2     | target angle th* (0)      | rad   |
| 3     | target angular velocity   | rad/s |
| 4     | fraction of time left     | 1 at reset, 0 after the last step |

## Action space
``Box(-2, 2, (1,), float32)``: the torque ``u`` in N m. Finite out-of-range actions are clipped.

## Reward
``-dt (e'Qe + u'Ru)`` each step with ``e = [wrap(th - th*), th' - th*']`` (``wrap`` into
``[-pi, pi)``, so a full turn costs nothing), ``Q = diag(1, 0.1)``, ``R = 0.01``; the last step
also adds ``-e_N' Qf e_N`` with ``Qf = diag(100, 10)``. The episode return is exactly ``-J``.
(Q and R keep Gymnasium's ratio of angle to velocity cost.)

## Starting state
``th ~ U[-pi, pi]``, ``th' ~ U[-1, 1]`` (Gymnasium's start box); the target is upright at rest.

## Episode end
``terminated`` after N = 100 steps. Success: ``||e_N||_2 < 0.1`` (within about 6 degrees and
0.1 rad/s of upright rest).

## Expert
Box-constrained iLQR (`trc_gym.experts.ilqr`) from several initial guesses, best plan kept:
clipped LQR, energy pumping (``u = bound * sign(th' (E* - E))`` with an LQR
catch near the top) started with no kick, a kick left and a kick right, and the four cheapest
(by J) of 342 screened bang-bang swing-ups: full torque of either sign, switched at two steps
(every pair of 2, 4, ..., 38), then the LQR catch. The cheapest swing-up reaches the top
early with few, full swings; the screen ranks those before any solve.

## Parameters
| name | value | unit |
|------|-------|------|
| g | 10.0 | m/s^2 |
| m | 1.0 | kg |
| l | 1.0 | m |
| dt | 0.05 | s |
| horizon N | 100 | steps |
| torque bound | 2.0 | N m |
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from trc_gym.envs.base import ControlEnv
from trc_gym.envs.rendering import BODY, DARK, TARGET
from trc_gym.experts import ILQRExpert, clipped_lqr_plans
from trc_gym.experts.guesses import bang_bang_plans, swing_up_plans
from trc_gym.problem import ControlProblem, wrap_angle

G, MASS, LENGTH, MAX_TORQUE = 10.0, 1.0, 1.0, 2.0


class PendulumProblem(ControlProblem):
    def __init__(self):
        super().__init__(
            name="Pendulum", state_names=("angle", "angular_velocity"),
            control_names=("torque",), dt=0.05, horizon=100, Q=np.diag([1.0, 0.1]),
            R=[[0.01]], Qf=np.diag([100.0, 10.0]), u_low=[-MAX_TORQUE], u_high=[MAX_TORQUE],
            state_low=[-math.pi, -1.0], state_high=[math.pi, 1.0], tolerance=0.1,
            cost_weight=0.05, error_groups={"angle": (0,), "angular_velocity": (1,)},
            angle_indices=(0,),
        )

    def dynamics(self, x: Tensor, u: Tensor) -> Tensor:
        th, thdot = x[..., 0], x[..., 1]
        acc = 3.0 * G / (2.0 * LENGTH) * torch.sin(th) + 3.0 / (MASS * LENGTH**2) * u[..., 0]
        return torch.stack([thdot, acc], dim=-1)

    def state_error(self, x: Tensor, target: Tensor) -> Tensor:
        e = x - target
        return torch.cat([wrap_angle(e[..., :1]), e[..., 1:]], dim=-1)


# The expert's screened bang-bang swing-ups: full torque of a first sign, switched at two
# steps from every pair in 2, 4, ..., 38 (up to 1.9 s), then an LQR catch near the top.
BANG_BANG_SWITCHES = np.array([(sign, *steps) for sign in (1, -1)
                               for steps in itertools.combinations(range(2, 40, 2), 2)])
CATCH = (0, 0.2, 0.6)  # the LQR catch: |angle error| + 0.2 |rate error| < 0.6


class PendulumExpert(ILQRExpert):
    """iLQR from clipped LQR, energy pumping with an LQR catch near the top (no kick, a kick
    left, a kick right), and the four cheapest of the screened bang-bang swing-ups
    (`BANG_BANG_SWITCHES`). (Zero torque, the default's other guess, never wins here.)"""

    def screened_guesses(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        return bang_bang_plans(self.problem, x0, target, BANG_BANG_SWITCHES, CATCH)

    def initial_guesses(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        problem = self.problem
        scale = 3.0 * G / (2.0 * LENGTH)

        def pump(x: np.ndarray, k: int) -> np.ndarray:
            # Energy per unit inertia: 1/2 th'^2 + scale cos th, upright at rest: scale.
            energy = 0.5 * x[:, 1] ** 2 + scale * np.cos(x[:, 0])
            push = np.sign(x[:, 1] * (scale - energy))
            push = np.where(x[:, 1] == 0.0, 1.0, push)  # at rest: any push starts the swing
            return MAX_TORQUE * push[:, None]

        return [clipped_lqr_plans(problem, x0, target),
                *swing_up_plans(problem, x0, target, pump, CATCH, (MAX_TORQUE,), (6,))]


class PendulumEnv(ControlEnv):
    __doc__ = __doc__
    problem_class = PendulumProblem
    expert_class = PendulumExpert
    view = (-1.4, 1.4, -1.4, 1.4)

    def draw(self, canvas) -> None:
        """The rod (blue) from the pivot, the upright target (green) and, faded, the rod every
        third step so far."""
        def tip_of(th: float) -> tuple[float, float]:
            return (-LENGTH * math.sin(th), LENGTH * math.cos(th))  # th counter-clockwise from up

        canvas.line((0.0, 0.0), tip_of(self.target[0]), TARGET, 3)
        for past in self.trajectory[:-1:3]:
            canvas.line((0.0, 0.0), tip_of(past[0]), (205, 215, 240), 4)
        tip = tip_of(self.state[0])
        canvas.line((0.0, 0.0), tip, BODY, 12)
        canvas.circle(tip, 0.08, BODY)
        canvas.circle((0.0, 0.0), 0.05, DARK)
