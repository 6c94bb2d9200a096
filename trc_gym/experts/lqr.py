"""Linear-quadratic experts: finite-horizon LQR and the exact box-constrained QP.

For a linear problem ``x+ = A x + B u`` the whole trajectory is affine in the plan,
``X = Phi x0 + Gamma U``, so the cost is a convex quadratic in ``U`` and the bound is a box:
the expert's plan is the exact optimum of that QP, found by a primal-dual active-set method
(finitely convergent here, checked against the KKT conditions, with a bounded-variable
least-squares fallback). Finite-horizon LQR is the same QP without the bound, solved by the
backward Riccati recursion; clipped into the bound it is the classic baseline.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import lsq_linear

from trc_gym.experts.base import Expert
from trc_gym.problem import ControlProblem, LinearProblem, stacked_prediction


def finite_horizon_lqr(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray,
                       Qf: np.ndarray, horizon: int, cost_weight: float = 1.0) -> np.ndarray:
    """Time-varying gains ``K [N, m, n]`` (``u_k = -K_k e_k``) by the backward Riccati recursion
    for ``w * sum_k (e'Qe + u'Ru) + e_N' Qf e_N`` under ``e+ = A e + B u``. ``A [..., n, n]`` and
    ``B [..., n, m]`` may carry leading batch dimensions (one system each): then
    ``K [N, ..., m, n]``."""
    def tr(M: np.ndarray) -> np.ndarray:
        return np.swapaxes(M, -1, -2)

    P = np.broadcast_to(Qf, A.shape)
    gains = []
    for _ in range(horizon):
        K = np.linalg.solve(cost_weight * R + tr(B) @ P @ B, tr(B) @ P @ A)
        P = cost_weight * Q + tr(A) @ P @ (A - B @ K)
        P = 0.5 * (P + tr(P))
        gains.append(K)
    return np.stack(gains[::-1])


def clipped_lqr_plans(problem: ControlProblem, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Plans ``U [B, N, m]`` of the time-varying LQR run closed loop from ``x0`` with its
    controls clipped into the bound: ``u_k = clip(u* - K_k e_k)``. Nonlinear problems use the
    linearisation at the target, which must be a rest state held by the control
    ``u* = problem.equilibrium_control(target)`` (zero by default); each distinct target gets
    its own linearisation."""
    x = problem.check_states(x0, "x0")
    target = problem.check_states(target, "target", batch=x.shape[0])
    u_star = np.zeros((len(x), problem.n_control))
    if isinstance(problem, LinearProblem):
        A, B = problem.A, problem.B
    else:
        u_star = problem.equilibrium_control(target)
        shared = bool(np.all(target == target[:1]))
        jac_x, jac_u = problem.jacobians(target[:1] if shared else target,
                                         u_star[:1] if shared else u_star)
        A, B = (jac_x[0], jac_u[0]) if shared else (jac_x, jac_u)
    gains = finite_horizon_lqr(A, B, problem.Q, problem.R, problem.Qf, problem.horizon,
                               problem.cost_weight)
    plan = []
    for K in gains:
        e = problem.state_error_np(x, target)
        u = np.clip(u_star - (K @ e[..., None])[..., 0], problem.u_low, problem.u_high)
        plan.append(u)
        x = problem.step(x, u)
    return np.stack(plan, axis=1)


def box_qp_of(problem: LinearProblem, x0: np.ndarray, target: np.ndarray):
    """The plan QP ``min 1/2 z'Hz + g'z + c`` over ``z = vec(U)`` in the box, batched over
    starts: returns ``H [d, d], g [B, d], c [B], lo [d], hi [d]`` with ``d = N m``."""
    N, n = problem.horizon, problem.n_state
    Phi, Gamma = stacked_prediction(problem.A, problem.B, N)
    w = problem.cost_weight
    W = np.kron(np.diag(np.r_[np.full(N, w), 0.0]), problem.Q)
    W[N * n:, N * n:] = problem.Qf
    Rbar = np.kron(np.eye(N), w * problem.R)
    free_error = x0 @ Phi.T - np.tile(target, N + 1)  # [B, (N+1) n]: error under zero controls
    H = 2.0 * (Gamma.T @ W @ Gamma + Rbar)
    g = 2.0 * free_error @ W @ Gamma
    c = np.einsum("bi,ij,bj->b", free_error, W, free_error)
    return 0.5 * (H + H.T), g, c, np.tile(problem.u_low, N), np.tile(problem.u_high, N)


def solve_box_qp(H: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 max_iter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimiser of ``1/2 z'Hz + g'z`` s.t. ``lo <= z <= hi`` for each row of ``g [B, d]``
    (``H [d, d]`` positive definite), by the primal active-set method (Nocedal & Wright,
    Alg. 16.3) run on every row at once. Returns ``z [B, d]`` and which rows needed the
    fallback ``[B]`` (bool): rows that fail the KKT check are re-solved by scipy's
    bounded-variable least squares (none did in our tests)."""
    B, d = g.shape
    rows = np.arange(B)
    z = np.clip(np.linalg.solve(H, -g.T).T, lo, hi)
    at_lo, at_hi = z <= lo, z >= hi  # working set: coordinates held at a bound
    done = np.zeros(B, dtype=bool)
    for _ in range(max_iter or 10 * d):
        todo = ~done
        if not todo.any():
            break
        fixed = at_lo | at_hi
        M = np.where(fixed[todo, :, None], np.eye(d)[None], H[None])
        rhs = np.where(fixed[todo], z[todo], -g[todo])
        step = np.linalg.solve(M, rhs[..., None])[..., 0] - z[todo]  # to the working-set optimum
        moving = np.abs(step).max(axis=1) > 1e-9 * (1.0 + np.abs(z[todo]).max(axis=1))
        # Rows at their working-set optimum: stop if every multiplier has the right sign,
        # else release the coordinate whose multiplier is most wrong.
        idx = rows[todo][~moving]
        grad = z[idx] @ H + g[idx]
        wrong = np.where(at_lo[idx], -grad, np.where(at_hi[idx], grad, -np.inf))
        worst = wrong.argmax(axis=1)
        release = wrong[np.arange(len(idx)), worst] > 1e-10 * (1.0 + np.abs(g[idx]).max(axis=1))
        done[idx[~release]] = True
        at_lo[idx[release], worst[release]] = False
        at_hi[idx[release], worst[release]] = False
        # Rows still moving: go as far toward the optimum as the box allows; a blocking
        # coordinate joins the working set.
        idx, step = rows[todo][moving], step[moving]
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(step < 0, (lo - z[idx]) / step, np.where(step > 0, (hi - z[idx]) / step,
                                                                      np.inf))
        room = np.where(fixed[idx], np.inf, np.maximum(room, 0.0))
        block = room.argmin(axis=1)
        alpha = np.minimum(1.0, room[np.arange(len(idx)), block])
        z[idx] += alpha[:, None] * step
        blocked = alpha < 1.0
        bi, bj = idx[blocked], block[blocked]
        up = step[blocked, bj] > 0
        at_hi[bi[up], bj[up]] = True
        at_lo[bi[~up], bj[~up]] = True
        z[bi, bj] = np.where(up, hi[bj], lo[bj])
    fallback = ~kkt_satisfied(H, g, lo, hi, z)
    if fallback.any():
        L = np.linalg.cholesky(H)
        for i in np.flatnonzero(fallback):
            z[i] = lsq_linear(L.T, -np.linalg.solve(L, g[i]), bounds=(lo, hi), method="bvls",
                              tol=1e-12).x
    return z, fallback


def kkt_satisfied(H: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray, z: np.ndarray,
                  tol: float = 1e-7) -> np.ndarray:
    """Whether each ``z [B, d]`` satisfies the box QP's KKT conditions (to ``tol``, relative)."""
    grad = z @ H + g
    scale = tol * (1.0 + np.abs(g).max(axis=1, keepdims=True))
    free = (z > lo + 1e-12) & (z < hi - 1e-12)
    feasible = np.all((z >= lo - 1e-12) & (z <= hi + 1e-12), axis=1)
    stationary = np.where(free, np.abs(grad) <= scale,
                          np.where(z <= lo + 1e-12, grad >= -scale, grad <= scale))
    return feasible & stationary.all(axis=1)


class BoxQPExpert(Expert):
    """The exact optimal plans of a linear problem: the box-constrained QP over the whole plan
    (`solve_box_qp`)."""

    problem: LinearProblem

    def solve(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        H, g, _, lo, hi = box_qp_of(self.problem, x0, target)
        z, _ = solve_box_qp(H, g, lo, hi)
        return z.reshape(len(x0), self.problem.horizon, self.problem.n_control)
