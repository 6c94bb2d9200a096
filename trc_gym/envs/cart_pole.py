"""TRC-CartPole-v0: swing a pole up on a force-limited cart and balance it over the origin.

## Description
The classic cart-pole (Barto, Sutton & Anderson 1983, with Gymnasium's CartPole parameters): a
cart of mass 1 kg on a frictionless track carries a uniform pole of mass 0.1 kg and half-length
0.5 m on an unactuated hinge. A horizontal force ``F`` (bounded, continuous) pushes the cart.
The pole angle ``th`` is measured from upright, positive leaning right (towards +x). With
``M = 1.1 kg`` the total mass and ``ml = 0.05 kg m``:

    tmp   = (F + ml th'^2 sin th) / M
    th''  = (g sin th - cos th tmp) / (l (4/3 - m cos^2 th / M))
    x''   = tmp - ml th'' cos th / M

integrated by RK4 with ``F`` held over each step. The task is a swing-up: from any pole angle
(hanging included), bring the cart to rest at the origin with the pole balanced upright, in
N = 100 steps of dt = 0.05 s (5 s). With at most 10 N (cart accelerations below about g) the
pole cannot be flicked up from hanging: the cart must rock it up over one or two swings. There
is no track limit (Gymnasium's +-2.4 m); the cost keeps the cart near the origin.

## Observation space
``Box(-inf, inf, (9,), float32)``: ``[x, x', th, th', x*, x*', th*, th*', fraction of time
left]`` (Gymnasium's state order; the target is the upright rest state over ``x*``).

| index | observation                | unit  |
|-------|----------------------------|-------|
| 0     | cart position x            | m     |
| 1     | cart velocity x'           | m/s   |
| 2     | pole angle th from upright | rad (not wrapped: counts turns) |
| 3     | pole angular velocity th'  | rad/s |
| 4-7   | target state (x*, 0, 0, 0) | as above |
| 8     | fraction of time left      | 1 at reset, 0 after the last step |

## Action space
``Box(-10, 10, (1,), float32)``: the force ``F`` on the cart in N (Gymnasium's force_mag, but
continuous). Finite out-of-range actions are clipped.

## Reward
``-dt (e'Qe + F'RF)`` each step with ``e = x - x*`` (the angle wrapped into ``[-pi, pi)``, so
full turns cost nothing), ``Q = diag(1, 0.1, 1, 0.1)``, ``R = 0.001``; the last step also adds
``-e_N' Qf e_N`` with ``Qf = diag(100, 10, 100, 10)``. The episode return is exactly ``-J``.

## Starting state
``x, x', th' ~ U[-0.5, 0.5]`` and ``th ~ U[-pi, pi]`` (any pole angle). The target is the
origin, or with ``random_target=True`` the cart at ``x* ~ U[-1, 1]``, pole up, at rest.

## Episode end
``terminated`` after N = 100 steps. Success: ``||e_N||_2 < 0.1``.

## Expert
Box-constrained iLQR (`trc_gym.experts.ilqr`) from several initial guesses, best plan kept:
clipped LQR, zero force, clipped LQR with the control weight scaled by 10, 100 and 1000
(gentler catches, which stay within the force bound where the cost's own LQR saturates), and
the six cheapest (by J) of 49 screened swing-ups: energy pumping of the pole (Astrom &
Furuta's rule, bang-bang, with cart-centering terms, then an LQR catch near upright) with no
kick, and with a kick of full or half force left or right for 1 to 12 steps. How long the
first push lasts decides whether the pole comes over the top in one swing or falls back.

## Parameters
| name | value | unit |
|------|-------|------|
| g | 9.8 | m/s^2 |
| cart mass | 1.0 | kg |
| pole mass | 0.1 | kg |
| pole half-length l | 0.5 | m |
| force bound | 10.0 | N |
| dt | 0.05 | s |
| horizon N | 100 | steps |
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from trc_gym.envs.base import ControlEnv
from trc_gym.envs.rendering import BODY, DARK, TARGET
from trc_gym.experts import ILQRExpert
from trc_gym.experts.guesses import softened_lqr_plans, swing_up_plans
from trc_gym.problem import ControlProblem, wrap_angle

GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH, MAX_FORCE = 9.8, 1.0, 0.1, 0.5, 10.0
TOTAL_MASS = CART_MASS + POLE_MASS
POLE_MASS_LENGTH = POLE_MASS * HALF_LENGTH


class CartPoleProblem(ControlProblem):
    def __init__(self, random_target: bool = False):
        self.random_target = random_target
        super().__init__(
            name="CartPole",
            state_names=("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"),
            control_names=("force",), dt=0.05, horizon=100, Q=np.diag([1.0, 0.1, 1.0, 0.1]),
            R=[[0.001]], Qf=np.diag([100.0, 10.0, 100.0, 10.0]), u_low=[-MAX_FORCE],
            u_high=[MAX_FORCE], state_low=[-0.5, -0.5, -math.pi, -0.5],
            state_high=[0.5, 0.5, math.pi, 0.5], tolerance=0.1, cost_weight=0.05,
            error_groups={"cart": (0, 1), "pole": (2, 3)}, angle_indices=(2,),
        )

    def dynamics(self, x: Tensor, u: Tensor) -> Tensor:
        xdot, th, thdot = x[..., 1], x[..., 2], x[..., 3]
        sin, cos = torch.sin(th), torch.cos(th)
        tmp = (u[..., 0] + POLE_MASS_LENGTH * thdot**2 * sin) / TOTAL_MASS
        thacc = (GRAVITY * sin - cos * tmp) / (
            HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos**2 / TOTAL_MASS))
        xacc = tmp - POLE_MASS_LENGTH * thacc * cos / TOTAL_MASS
        return torch.stack([xdot, xacc, thdot, thacc], dim=-1)

    def state_error(self, x: Tensor, target: Tensor) -> Tensor:
        e = x - target
        return torch.cat([e[..., :2], wrap_angle(e[..., 2:3]), e[..., 3:]], dim=-1)

    def sample_targets(self, rng: np.random.Generator, size: int) -> np.ndarray:
        targets = np.zeros((size, 4))
        if self.random_target:
            targets[:, 0] = rng.uniform(-1.0, 1.0, size)
        return targets


# Control-weight scales of the gentler LQR catches among the expert's initial guesses: from a
# falling pole the cost's own LQR saturates and flings it round a full turn (J 6.4 where a
# catch costs 1.5 from x0 = [0.31, 0.083, 0.276, 0.451]).
SOFTENED_LQR = (10.0, 100.0, 1000.0)


# The expert's screened swing-ups: energy pumping after a kick either way of each of these
# forces (N) for each of these numbers of steps (and with no kick), then an LQR catch near
# upright; the six of lowest J are solved. A half-force kick reaches the optima that start
# below the bound.
KICKS, KICK_STEPS, SCREEN_KEEP = (MAX_FORCE, 0.5 * MAX_FORCE), tuple(range(1, 13)), 6
CATCH = (2, 0.1, 0.4)  # the LQR catch: |pole angle error| + 0.1 |pole rate error| < 0.4


class CartPoleExpert(ILQRExpert):
    """iLQR from clipped LQR, zero force, gentler clipped LQR catches (`SOFTENED_LQR`), and the
    six cheapest of the screened energy-pumping swing-ups with an LQR catch near upright
    (`KICKS`, `KICK_STEPS`)."""

    screen_keep = SCREEN_KEEP

    def initial_guesses(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        return (super().initial_guesses(x0, target)
                + softened_lqr_plans(self.problem, x0, target, SOFTENED_LQR))

    def screened_guesses(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        inertia = 4.0 / 3.0 * POLE_MASS * HALF_LENGTH**2  # about the hinge
        upright = POLE_MASS * GRAVITY * HALF_LENGTH

        def pump(x: np.ndarray, k: int) -> np.ndarray:
            # Pole energy changes as dE/dt = -ml th' cos(th) x'', so push against th' cos th
            # while short of upright energy; a weak spring keeps the cart near its target.
            th, thdot = x[:, 2], x[:, 3]
            energy = 0.5 * inertia * thdot**2 + upright * np.cos(th)
            push = -np.sign((upright - energy) * thdot * np.cos(th))
            push = np.where(thdot == 0.0, 1.0, push)
            centre = -0.3 * (x[:, 0] - target[:, 0]) - 0.3 * x[:, 1]
            return (MAX_FORCE * np.clip(push + centre, -1.0, 1.0))[:, None]

        return np.stack(swing_up_plans(self.problem, x0, target, pump, CATCH, KICKS,
                                       KICK_STEPS))


class CartPoleEnv(ControlEnv):
    __doc__ = __doc__
    problem_class = CartPoleProblem
    expert_class = CartPoleExpert
    view = (-2.5, 2.5, -2.0, 3.0)

    def draw(self, canvas) -> None:
        """Track, target (green: cart position, pole up), cart (dark), pole (blue) and, faded,
        the pole every third step so far."""
        def tip_of(x: float, th: float) -> tuple[float, float]:
            return (x + 2.0 * HALF_LENGTH * math.sin(th), 2.0 * HALF_LENGTH * math.cos(th))

        canvas.line((-2.5, 0.0), (2.5, 0.0), DARK, 2)
        tx = self.target[0]
        canvas.line((tx, 0.0), (tx, 2.0 * HALF_LENGTH + 0.3), TARGET, 3)
        for past in self.trajectory[:-1:3]:
            canvas.line((past[0], 0.0), tip_of(past[0], past[2]), (205, 215, 240), 3)
        x, _, th, _ = self.state
        canvas.rect((x, 0.0), 0.5, 0.3, DARK)
        canvas.line((x, 0.0), tip_of(x, th), BODY, 8)
        canvas.circle((x, 0.0), 0.04, (200, 200, 200))
