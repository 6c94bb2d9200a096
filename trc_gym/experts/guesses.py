"""Initial guesses for iLQR on non-convex problems: heuristic feedback controllers (energy
pumping for swing-ups, with an LQR catch near the target) rolled out into open-loop plans.

iLQR only finds a local optimum near its initial plan; on a swing-up, zero control or LQR from
hanging is a poor start (it never leaves the bottom, or pushes the wrong way). A rollout of a
crude but globally working feedback law gives the solver a plan in the right basin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trc_gym.experts.lqr import finite_horizon_lqr
from trc_gym.problem import ControlProblem

Controller = Callable[[np.ndarray, int], np.ndarray]  # (x [B, n], step k) -> u [B, m]


def closed_loop_plans(problem: ControlProblem, x0: np.ndarray,
                      controller: Controller) -> np.ndarray:
    """Plans ``U [B, N, m]``: the controls ``controller`` issues (clipped into the bound) while
    driving the problem from ``x0 [B, n]`` for its horizon."""
    x = problem.check_states(x0, "x0")
    plan = []
    for k in range(problem.horizon):
        u = np.clip(controller(x, k), problem.u_low, problem.u_high)
        plan.append(u)
        x = problem.step(x, u)
    return np.stack(plan, axis=1)


def lqr_gains_at(problem: ControlProblem, target: np.ndarray,
                 r_scale: float = 1.0) -> np.ndarray:
    """Stationary LQR gains ``K [B, m, n]`` (``u = u* - K e``) of the linearisation at each rest
    state ``target [B, n]``: the first gain of the finite-horizon recursion over 4 horizons,
    with the control weight ``R`` scaled by ``r_scale``."""
    u_star = problem.equilibrium_control(target)
    A, B = problem.jacobians(target, u_star)
    return finite_horizon_lqr(A, B, problem.Q, r_scale * problem.R, problem.Qf,
                              4 * problem.horizon, problem.cost_weight)[0]


def softened_lqr_plans(problem: ControlProblem, x0: np.ndarray, target: np.ndarray,
                       scales: tuple[float, ...]) -> list[np.ndarray]:
    """Plans ``[B, N, m]`` of stationary LQR about ``target`` with the control weight ``R``
    scaled up by each of ``scales``, flown from ``x0`` with its controls clipped: gentler
    gains than the cost's own, which saturate and overshoot from starts far from the target
    (a falling pole flung round a full turn), so that the catch stays within the bound."""
    u_star = problem.equilibrium_control(target)
    plans = []
    for scale in scales:
        K = lqr_gains_at(problem, target, scale)

        def controller(x: np.ndarray, k: int, K: np.ndarray = K) -> np.ndarray:
            return u_star - (K @ problem.state_error_np(x, target)[..., None])[..., 0]

        plans.append(closed_loop_plans(problem, x0, controller))
    return plans


def pump_then_catch(problem: ControlProblem, target: np.ndarray, pump: Controller,
                    near: Callable[[np.ndarray], np.ndarray], kick: float = 0.0,
                    kick_steps: int = 0) -> Controller:
    """A swing-up controller towards ``target [B, n]``: ``kick`` (a constant control, e.g.
    +-bound) for the first ``kick_steps`` steps, then ``pump`` (an energy-shaping law) until
    ``near(x)`` says the state is in the LQR's basin, then stationary LQR about the target."""
    K = lqr_gains_at(problem, target)
    u_star = problem.equilibrium_control(target)

    def controller(x: np.ndarray, k: int) -> np.ndarray:
        if k < kick_steps:
            return np.full((len(x), problem.n_control), kick)
        catch = u_star - (K @ problem.state_error_np(x, target)[..., None])[..., 0]
        return np.where(near(x)[:, None], catch, pump(x, k))

    return controller


def swing_up_plans(problem: ControlProblem, x0: np.ndarray, target: np.ndarray, pump: Controller,
                   catch: tuple[int, float, float], kicks: Sequence[float],
                   kick_steps: Sequence[int]) -> list[np.ndarray]:
    """Plans ``[B, N, m]`` of `pump_then_catch` flown from ``x0``: with no kick, then with a kick
    of ``+kick`` and of ``-kick`` (both swing directions) for each size in ``kicks`` and each
    number of steps in ``kick_steps``. The LQR catches in the region `catch_region`
    describes."""
    near = catch_region(problem, target, catch)
    plans = [(0.0, 0)] + [(sign * kick, steps) for kick in kicks for steps in kick_steps
                          for sign in (1, -1)]
    return [closed_loop_plans(problem, x0, pump_then_catch(problem, target, pump, near, k, s))
            for k, s in plans]


def catch_region(problem: ControlProblem, target: np.ndarray,
                 catch: tuple[int, float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """``near(x) [B]``: whether states ``x [B, n]`` are where an LQR catch takes over,
    ``|e_i| + w |e_(i+1)| < r`` for ``catch = (i, w, r)``: the error of the angle at state
    index ``i`` (rad) and of its rate after it (rad/s), about ``target [B, n]``."""
    i, weight, radius = catch

    def near(x: np.ndarray) -> np.ndarray:
        e = problem.state_error_np(x, target)
        return np.abs(e[:, i]) + weight * np.abs(e[:, i + 1]) < radius

    return near


def bang_bang_plans(problem: ControlProblem, x0: np.ndarray, target: np.ndarray,
                    switch_steps: np.ndarray, catch: tuple[int, float, float]) -> np.ndarray:
    """Plans ``[S, B, N, 1]`` of a single control: full control of one sign, switched at each
    of the steps in a row of ``switch_steps [S, 1 + k]`` (its first entry is the first sign,
    +1 or -1; then k increasing steps), with an LQR catch about ``target`` wherever
    `catch_region` says so. All ``S * B`` rollouts run as one batch."""
    if problem.n_control != 1:
        raise ValueError(f"bang_bang_plans needs a single control, {problem.name} has "
                         f"{problem.n_control}")
    switch_steps = np.asarray(switch_steps)
    S, B, N = len(switch_steps), len(x0), problem.horizon
    flips = (np.arange(N)[None, :, None] >= switch_steps[:, None, 1:]).sum(-1)  # [S, N]
    signs = switch_steps[:, :1] * (-1.0) ** flips
    bound = np.where(signs > 0, problem.u_high[0], -problem.u_low[0]) * signs  # [S, N]
    schedule = np.repeat(bound, B, axis=0)  # rows in the order of np.tile(x0, (S, 1))
    targets = np.tile(target, (S, 1))
    near = catch_region(problem, targets, catch)
    K = lqr_gains_at(problem, target)
    u_star = problem.equilibrium_control(target)
    K, u_star = np.tile(K, (S, 1, 1)), np.tile(u_star, (S, 1))

    def controller(x: np.ndarray, k: int) -> np.ndarray:
        lqr = u_star - (K @ problem.state_error_np(x, targets)[..., None])[..., 0]
        return np.where(near(x)[:, None], lqr, schedule[:, k:k + 1])

    return closed_loop_plans(problem, np.tile(x0, (S, 1)), controller).reshape(S, B, N, 1)
