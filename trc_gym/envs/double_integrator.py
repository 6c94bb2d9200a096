"""TRC-DoubleIntegrator-v0: drive a unit mass on a line to rest at a target position.

## Description
A point mass with position ``p`` and velocity ``v`` is pushed by a bounded acceleration ``a``
held constant over each step (zero-order hold), for a fixed horizon of N = 15 steps of
dt = 0.33 s. The task is the seed's main problem: reach the target rest state ``[p*, 0]``
cheaply. The exact discrete step is

    p+ = p + v dt + a dt^2 / 2,        v+ = v + a dt.

## Observation space
``Box(-inf, inf, (5,), float32)``: ``[p, v, p*, v* (= 0), fraction of time left]``.

| index | observation            | unit |
|-------|------------------------|------|
| 0     | position p             | m    |
| 1     | velocity v             | m/s  |
| 2     | target position p*     | m    |
| 3     | target velocity (0)    | m/s  |
| 4     | fraction of time left  | 1 at reset, 0 after the last step |

## Action space
``Box(-4, 4, (1,), float32)``: the acceleration ``a`` in m/s^2. Finite out-of-range actions are
clipped into the bound.

## Reward
``-(e'Qe + a'Ra)`` each step with ``e = x - x*``, ``Q = diag(10, 5)``, ``R = 0.1``; the last step
also adds ``-e_N' Qf e_N`` with ``Qf = 20 Q``. The episode return is exactly ``-J``.

## Starting state
``[p, v] ~ U[-2, 2]^2``. The target is the rest state ``[0, 0]``, or ``[p*, 0]`` with
``p* ~ U[-2, 2]`` when made with ``random_target=True``; ``reset(options=...)`` sets either.
(A target with non-zero velocity cannot be held, so none is offered.)

## Episode end
``terminated`` after N = 15 steps. Success: ``||x_N - x*||_2 < 0.1``.

## Expert
The exact optimum of the box-constrained QP over the whole plan (finite-horizon LQR when the
bound is inactive).
"""

from __future__ import annotations

import numpy as np

from trc_gym.envs.base import ControlEnv
from trc_gym.envs.rendering import BODY, DARK, TARGET
from trc_gym.experts import BoxQPExpert
from trc_gym.problem import LinearProblem


class DoubleIntegratorProblem(LinearProblem):
    def __init__(self, random_target: bool = False):
        dt = 0.33
        self.A = np.array([[1.0, dt], [0.0, 1.0]])
        self.B = np.array([[0.5 * dt**2], [dt]])  # exact zero-order hold
        self.random_target = random_target
        Q = np.diag([10.0, 5.0])
        super().__init__(
            name="DoubleIntegrator", state_names=("position", "velocity"),
            control_names=("acceleration",), dt=dt, horizon=15, Q=Q, R=[[0.1]], Qf=20.0 * Q,
            u_low=[-4.0], u_high=[4.0], state_low=[-2.0, -2.0], state_high=[2.0, 2.0],
            tolerance=0.1, error_groups={"position": (0,), "velocity": (1,)},
        )

    def sample_targets(self, rng: np.random.Generator, size: int) -> np.ndarray:
        targets = np.zeros((size, 2))
        if self.random_target:
            targets[:, 0] = rng.uniform(-2.0, 2.0, size)
        return targets


class DoubleIntegratorEnv(ControlEnv):
    __doc__ = __doc__
    problem_class = DoubleIntegratorProblem
    expert_class = BoxQPExpert
    view = (-4.0, 4.0, -4.0, 4.0)

    def draw(self, canvas) -> None:
        p, v = self.state
        canvas.line((-4.0, -0.25), (4.0, -0.25), DARK, 2)  # track
        canvas.polygon([(self.target[0], -0.25), (self.target[0], 1.0),
                        (self.target[0] + 0.4, 0.8)], TARGET)  # flag at p*
        canvas.rect((p, 0.0), 0.6, 0.5, BODY)
        canvas.line((p, 0.5), (p + 0.5 * v, 0.5), DARK, 3)  # velocity arrow, 0.5 s ahead
