"""TRC-ObstacleNav-v0: steer a point mass to a goal around circular obstacles.

## Description
A unit point mass in the plane, pushed by a bounded acceleration held constant over each step
(an exact zero-order-hold double integrator per axis), must come to rest at the goal within
N = 50 steps of dt = 0.1 s (5 s) without touching any of five fixed circular obstacles that
stand between the start region and the goal. The straight line is blocked, so the problem is
non-convex: there are several ways around (above or below each obstacle). The exact step:

    p+ = p + v dt + a dt^2 / 2,        v+ = v + a dt        (per axis)

**Collision**: a state (after a step) strictly inside an obstacle, ``||p - c_j|| < r_j``.
Positions are checked at every step, i.e. every 0.1 s (at the speeds reached here, at most a
few centimetres of a corner could be cut between two checks).

## Obstacle layout (fixed for this id)
| obstacle | centre (m)   | radius (m) |
|----------|--------------|------------|
| 0        | (-1.5,  1.2) | 1.0        |
| 1        | (-1.0, -1.6) | 0.9        |
| 2        | ( 1.2,  0.0) | 1.0        |
| 3        | ( 1.8,  2.6) | 0.7        |
| 4        | ( 2.2, -2.4) | 0.7        |

## Observation space
``Box(-inf, inf, (24,), float32)``: ``[px, py, vx, vy, px*, py*, vx*, vy*, fraction of time
left, c0x, c0y, r0, ..., c4x, c4y, r4]``.

| index | observation                          | unit |
|-------|--------------------------------------|------|
| 0, 1  | position px, py                      | m    |
| 2, 3  | velocity vx, vy                      | m/s  |
| 4-7   | target: the goal at rest             | as 0-3 |
| 8     | fraction of time left                | 1 at reset, 0 after the last step |
| 9-23  | obstacles: centre x, centre y, radius for each of the five (constant) | m |

## Action space
``Box(-2, 2, (2,), float32)``: the acceleration ``[ax, ay]`` in m/s^2 (a box bound per axis).
Finite out-of-range actions are clipped.

## Reward
``-dt (e'Qe + a'Ra)`` each step with ``e = x - x*``, ``Q = diag(1, 1, 0, 0)``, ``R = 0.1 I``;
the last step also adds ``-e_N' Qf e_N`` with ``Qf = 100 I``. A **collision** ends the episode
at once: that step also subtracts the terminal cost of the colliding state and a penalty of
1000. The episode return is exactly ``-J`` (`problem.cost` of the plan, whose batched rollout
freezes a colliding trajectory at its collision state).

## Starting state
``px ~ U[-4.5, -3.5] m``, ``py ~ U[-2.5, 2.5] m``, ``vx, vy ~ U[-0.5, 0.5] m/s``. The goal is
the rest state at ``(4, 0)``, or with ``random_target=True`` at ``px* ~ U[3.5, 4.5] m``,
``py* ~ U[-2.5, 2.5] m``; ``reset(options=...)`` sets either. Neither region touches an
obstacle.

## Episode end
``terminated`` after N = 50 steps, or earlier on a collision. **Success**: no collision and
``||x_N - x*||_2 < 0.1``.

## Expert
Box-constrained iLQR (`trc_gym.experts.ilqr`) on J plus an obstacle barrier
``w max(0, r_j + margin - ||p_k - c_j||)^2`` (summed over steps and obstacles), started from
the straight line and from detours through the via points ``(0, -2.5)``, ``(0, 0)`` and
``(0, 2.5)`` m, each flown by a clipped PD law tracking a point that moves along the path; the
best successful, collision-free plan per start is kept. It is then solved again with the margin
shrunk and the weight raised (continuation: ``(margin, w)`` = (0.1 m, 1e3), (0.01 m, 1e4),
(0.002 m, 1e6)), so that its J pays almost nothing for the margin.

## Parameters
| name | value | unit |
|------|-------|------|
| dt | 0.1 | s |
| horizon N | 50 | steps |
| acceleration bound (per axis) | 2.0 | m/s^2 |
| collision penalty | 1000 | - |
| expert barrier (margin, weight) stages | (0.1, 1e3), (0.01, 1e4), (0.002, 1e6) | m, per m^2 |
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
from trc_gym.problem import LinearProblem

OBSTACLES = np.array([  # centre x, centre y, radius (m)
    [-1.5, 1.2, 1.0],
    [-1.0, -1.6, 0.9],
    [1.2, 0.0, 1.0],
    [1.8, 2.6, 0.7],
    [2.2, -2.4, 0.7],
])
A_MAX = 2.0  # m/s^2 per axis
GOAL = np.array([4.0, 0.0, 0.0, 0.0])
COLLISION_PENALTY = 1000.0
# Expert only: the obstacle barrier's (margin m, weight per m^2) stages.
BARRIER_STAGES = ((0.1, 1e3), (0.01, 1e4), (0.002, 1e6))
VIA_X, VIA_YS = 0.0, (-2.5, 0.0, 2.5)  # detour via points of the initial guesses


class ObstacleNavProblem(LinearProblem):
    """Linear dynamics; the obstacles make the problem non-convex, so its expert is iLQR from
    several initial guesses rather than the linear problems' QP."""

    success_rule = "‖x_N − x*‖ < 0.1, no collision"  # README's env table

    def __init__(self, random_target: bool = False):
        self.random_target = random_target
        dt = 0.1
        self.A = np.array([[1.0, 0.0, dt, 0.0], [0.0, 1.0, 0.0, dt],
                           [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
        self.B = np.array([[0.5 * dt**2, 0.0], [0.0, 0.5 * dt**2], [dt, 0.0], [0.0, dt]])
        self.obstacles = OBSTACLES.copy()
        super().__init__(
            name="ObstacleNav", state_names=("x", "y", "vx", "vy"),
            control_names=("ax", "ay"), dt=dt, horizon=50, Q=np.diag([1.0, 1.0, 0.0, 0.0]),
            R=0.1 * np.eye(2), Qf=100.0 * np.eye(4), u_low=[-A_MAX, -A_MAX],
            u_high=[A_MAX, A_MAX], state_low=[-4.5, -2.5, -0.5, -0.5],
            state_high=[-3.5, 2.5, 0.5, 0.5], tolerance=0.1, cost_weight=dt,
            failure_penalty=COLLISION_PENALTY,
            error_groups={"position": (0, 1), "velocity": (2, 3)},
        )

    # ------------------------------------------------------------------ obstacles
    def clearance_torch(self, positions: Tensor) -> Tensor:
        """Distance to each obstacle's edge ``[..., K]`` of positions ``[..., 2]`` (m; negative
        inside)."""
        obs = torch.as_tensor(self.obstacles, dtype=positions.dtype, device=positions.device)
        diff = positions[..., None, :] - obs[:, :2]
        return torch.sqrt((diff * diff).sum(-1) + 1e-12) - obs[:, 2]

    def constraint_margins_torch(self, states: Tensor) -> Tensor:
        """The clearance to each obstacle ``[..., K]`` (m)."""
        return self.clearance_torch(states[..., :2])

    def failure_torch(self, x: Tensor, step: int | Tensor) -> Tensor:
        """A collision: inside any obstacle."""
        return (self.constraint_margins_torch(x) < 0.0).any(-1)

    # ------------------------------------------------------------------ outcomes
    def collisions(self, states: np.ndarray) -> np.ndarray:
        """Whether each trajectory ``[B, N+1, 4]`` has a state after its start inside an
        obstacle ``[B]``."""
        with torch.no_grad():
            clearance = self.clearance_torch(torch.as_tensor(np.asarray(states)[:, 1:, :2]))
        return (clearance < 0.0).any(-1).any(-1).numpy()

    def constraint_violations(self, states: np.ndarray) -> np.ndarray:
        return self.collisions(states)

    def success(self, states: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Goal reached (terminal error below 0.1) without a collision ``[B]``."""
        return super().success(states, target) & ~self.collisions(states)

    def observation_extras(self) -> np.ndarray:
        return self.obstacles.reshape(-1).copy()

    def sample_targets(self, rng: np.random.Generator, size: int) -> np.ndarray:
        targets = np.tile(GOAL, (size, 1))
        if self.random_target:
            targets[:, 0] = rng.uniform(3.5, 4.5, size)
            targets[:, 1] = rng.uniform(-2.5, 2.5, size)
        return targets


class ObstacleNavExpert(ILQRExpert):
    """iLQR on J plus an obstacle barrier, from the straight line and three detours."""

    barrier_stages = BARRIER_STAGES

    def clearance_torch(self, states: Tensor) -> Tensor:
        """Each state's distance to each obstacle's edge after the start ``[B, N, K]``."""
        return self.problem.clearance_torch(states[:, 1:, :2])

    def initial_guesses(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """The straight line to the goal, and detours through each via point ``(0, y)``, each
        flown by `waypoint_plans`."""
        guesses = [self.waypoint_plans(x0, target, None)]
        for y in VIA_YS:
            guesses.append(self.waypoint_plans(x0, target, np.array([VIA_X, y])))
        return guesses

    def waypoint_plans(self, x0: np.ndarray, target: np.ndarray,
                       via: np.ndarray | None) -> np.ndarray:
        """Plans ``[B, N, 2]`` of a clipped PD law tracking a point that moves at constant
        speed along the polyline start -> ``via`` -> goal (or start -> goal), arriving at the
        goal at 80% of the horizon."""
        p = self.problem
        x0 = p.check_states(x0, "x0")
        points = [x0[:, :2]] + ([np.broadcast_to(via, x0[:, :2].shape)] if via is not None
                                else []) + [target[:, :2]]
        legs = [np.linalg.norm(b - a, axis=1) for a, b in itertools.pairwise(points)]
        total = np.maximum(sum(legs), 1e-9)
        arrive = 0.8 * p.horizon * p.dt
        kp, kd = 4.0, 4.0

        def track(x: np.ndarray, k: int) -> np.ndarray:
            s = np.minimum(k * p.dt / arrive, 1.0) * total  # arc length of the reference
            ref = points[-1].copy()
            start = np.zeros_like(s)
            for a, b, length in zip(points[:-1], points[1:], legs):
                frac = np.clip((s - start) / np.maximum(length, 1e-9), 0.0, 1.0)[:, None]
                on_leg = (s >= start) & (s <= start + length)
                ref = np.where(on_leg[:, None], a + frac * (b - a), ref)
                start = start + length
            return kp * (ref - x[:, :2]) - kd * x[:, 2:]

        return closed_loop_plans(p, x0, track)


class ObstacleNavEnv(ControlEnv):
    __doc__ = __doc__
    problem_class = ObstacleNavProblem
    expert_class = ObstacleNavExpert
    view = (-5.5, 5.5, -5.5, 5.5)

    def draw(self, canvas) -> None:
        """Top view: obstacles (grey, red once hit), the goal (green), the path so far and the
        mass (blue) with its velocity (0.5 s ahead)."""
        p = self.problem
        hit = p.clearance_torch(torch.as_tensor(self.state[:2])).numpy() < 0.0
        for (cx, cy, r), collided in zip(p.obstacles, hit):
            canvas.circle((cx, cy), r, WARN if collided else (150, 150, 150))
        canvas.circle(tuple(self.target[:2]), 0.15, TARGET)
        path = [tuple(s[:2]) for s in self.trajectory]
        for a, b in itertools.pairwise(path):
            canvas.line(a, b, DARK, 2)
        px, py, vx, vy = self.state
        canvas.circle((px, py), 0.12, BODY)
        canvas.line((px, py), (px + 0.5 * vx, py + 0.5 * vy), DARK, 2)
