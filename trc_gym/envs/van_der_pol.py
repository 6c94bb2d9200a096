"""TRC-VanDerPol-v0: steer the forced Van der Pol oscillator to rest.

## Description
The Van der Pol oscillator with damping parameter ``mu = 1`` is a nonlinear system whose
unforced motion is a stable limit cycle around the origin (negative damping inside
``|x| < 1``, positive outside). A bounded force ``u`` pushes it for N = 100 steps of
dt = 0.05 s (5 s); the task, from the seed's reference implementation, is to bring it to rest
at the target cheaply. Continuous dynamics, integrated by RK4 with ``u`` held over each step:

    x' = v,        v' = mu (1 - x^2) v - x + u.

## Observation space
``Box(-inf, inf, (5,), float32)``: ``[x, v, x*, v* (= 0), fraction of time left]``.

| index | observation            | unit |
|-------|------------------------|------|
| 0     | position x             | -    |
| 1     | velocity v = x'        | 1/s  |
| 2     | target position x*     | -    |
| 3     | target velocity (0)    | 1/s  |
| 4     | fraction of time left  | 1 at reset, 0 after the last step |

(The oscillator is dimensionless: time in s, state and force in the model's own units.)

## Action space
``Box(-2, 2, (1,), float32)``: the force ``u``. Finite out-of-range actions are clipped.

## Reward
``-dt (e'Qe + u'Ru)`` each step with ``e = x - x*``, ``Q = diag(10, 5)``, ``R = 0.1`` (the
running cost approximates an integral, so it is weighted by dt); the last step also adds
``-e_N' Qf e_N`` with ``Qf = 20 Q``. The episode return is exactly ``-J``.

## Starting state
``[x, v] ~ U[-2, 2]^2``. The target is the origin, or with ``random_target=True`` a rest state
``[x*, 0]`` with ``x* ~ U[-1, 1]`` (held by the constant force ``u* = x*``, inside the bound);
``reset(options=...)`` sets either.

## Episode end
``terminated`` after N = 100 steps. Success: ``||x_N - x*||_2 < 0.2``.

## Expert
Box-constrained iLQR (`trc_gym.experts.ilqr`) started from the clipped finite-horizon LQR of
the linearisation at the target (and from zero force); the LQR plan itself is a candidate, so
the expert's cost never exceeds clipped LQR's.

## Parameters
| name | value | unit |
|------|-------|------|
| mu (damping) | 1.0 | - |
| dt | 0.05 | s |
| horizon N | 100 | steps |
| force bound | 2.0 | - |
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from trc_gym.envs.base import ControlEnv
from trc_gym.envs.rendering import BODY, DARK, TARGET
from trc_gym.experts import ILQRExpert
from trc_gym.problem import ControlProblem

MU = 1.0


class VanDerPolProblem(ControlProblem):
    def __init__(self, random_target: bool = False):
        self.random_target = random_target
        Q = np.diag([10.0, 5.0])
        super().__init__(
            name="VanDerPol", state_names=("position", "velocity"), control_names=("force",),
            dt=0.05, horizon=100, Q=Q, R=[[0.1]], Qf=20.0 * Q, u_low=[-2.0], u_high=[2.0],
            state_low=[-2.0, -2.0], state_high=[2.0, 2.0], tolerance=0.2, cost_weight=0.05,
            error_groups={"position": (0,), "velocity": (1,)},
        )

    def dynamics(self, x: Tensor, u: Tensor) -> Tensor:
        pos, vel = x[..., 0], x[..., 1]
        acc = MU * (1.0 - pos**2) * vel - pos + u[..., 0]
        return torch.stack([vel, acc], dim=-1)

    def equilibrium_control(self, target: np.ndarray) -> np.ndarray:
        return np.asarray(target, dtype=np.float64)[:, :1].copy()  # v' = 0 at rest needs u = x*

    def sample_targets(self, rng: np.random.Generator, size: int) -> np.ndarray:
        targets = np.zeros((size, 2))
        if self.random_target:
            targets[:, 0] = rng.uniform(-1.0, 1.0, size)
        return targets


class VanDerPolEnv(ControlEnv):
    __doc__ = __doc__
    problem_class = VanDerPolProblem
    expert_class = ILQRExpert
    view = (-3.0, 3.0, -3.0, 3.0)

    def draw(self, canvas) -> None:
        """Phase portrait: the trajectory so far, the target (green) and the state (blue)."""
        canvas.line((-3.0, 0.0), (3.0, 0.0), (210, 210, 210), 1)
        canvas.line((0.0, -3.0), (0.0, 3.0), (210, 210, 210), 1)
        path = [tuple(s) for s in self.trajectory]
        for a, b in itertools.pairwise(path):
            canvas.line(a, b, DARK, 2)
        canvas.circle(path[0], 0.06, DARK)  # the start
        canvas.circle(tuple(self.target), 0.12, TARGET)
        canvas.circle(tuple(self.state), 0.1, BODY)
