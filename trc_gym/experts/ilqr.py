"""Iterative LQR (box-constrained DDP) for any `ControlProblem`, batched over starts.

The objective is the problem's cost plus its soft state-constraint terms,

    F(U) = J(x0, x*, U) + penalty(X(U), x*),

minimised over plans ``U`` inside the control box, on the smooth trajectory ``X(U)``: the
dynamics run on through failure states (as ``rollout_torch(..., terminate=False)``), since the
penalty, not the env's early termination, keeps the solver away from them.

One iteration, for every unconverged start at once (tensors ``[B, ...]``, no loop over starts):

1. linearise the step ``x+ = f(x, u)`` along the current trajectory (``A_k``, ``B_k`` by
   reverse-mode autodiff of `discrete_step`) and take the cost's derivatives: Gauss-Newton
   through `state_error` (so wrapped angles are differentiated correctly), exact for the
   quadratic control cost, and gradient plus positive-semidefinite Hessian blocks of the penalty;
2. backward pass (Tassa, Mansard & Todorov, "Control-limited differential dynamic programming",
   ICRA 2014): at each step the feedforward ``k`` solves the box QP
   ``min_du 1/2 du' Quu du + Qu' du`` s.t. ``u_low <= u + du <= u_high`` by projected Newton,
   and the feedback gain is zero on the controls held at a bound (``K = -Quu_ff^-1 Qux`` on the
   free ones); ``Quu`` carries a per-start Levenberg-Marquardt term ``mu I`` that grows while
   ``Quu + mu I`` is not positive definite or no step helps, and shrinks after a good step;
3. forward pass ``u = clip(u_k + alpha k_k + K_k (x - x_k))`` with a backtracking line
   search: the full step for every start, then nine shorter ones rolled out at once for the
   starts where it fails; each start keeps its best step that satisfies the Armijo condition
   on the expected decrease.

A start stops when its objective improves by less than ``tol`` (relative), when no decrease is
predicted, or when its regularisation exceeds `MU_MAX`. The objective never increases, so a
plan is never worse than its initial guess. `ILQRExpert` runs `ilqr` from each of its
initial guesses and keeps, per start, the best successful plan.

``penalty`` (an env's soft state-constraint terms, e.g. obstacle or ground barriers; see
`ILQRExpert.barrier`) must be a sum of terms each depending on one state of one
trajectory (e.g. a barrier per time step): its Hessian blocks are read off per time step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from trc_gym.experts.base import Expert
from trc_gym.experts.lqr import clipped_lqr_plans
from trc_gym.problem import ControlProblem
from trc_gym.threads import one_thread

# Soft state-constraint terms: (states [B, N+1, n], target [B, n]) -> [B]
Penalty = Callable[[Tensor, Tensor], Tensor]

DTYPE = torch.float64
# Line-search step sizes, one group per rollout call (a later group only for the starts that
# no earlier step satisfied).
STEP_GROUPS = (0.5 ** np.arange(1), 0.5 ** np.arange(1, 10))
MU_MIN, MU_MAX, MU_FACTOR = 1e-6, 1e10, 10.0
SCREEN_CHUNK = 256  # starts screened per call: bounds the memory of the S * B screened rollouts
ARMIJO = 1e-4


def ilqr(problem: ControlProblem, x0: np.ndarray, target: np.ndarray, U_init: np.ndarray, *,
         penalty: Penalty | None = None, max_iter: int = 100, tol: float = 1e-6,
         device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Locally optimal plans from ``x0 [B, n]`` to ``target [B, n]`` started at
    ``U_init [B, N, m]`` (clipped into the bound).

    Returns ``(U [B, N, m], objective [B])`` with objective = cost + penalty of ``U``.
    ``max_iter`` bounds the iterations, ``tol`` is the relative objective decrease below which
    a start counts as converged. ``device``: where the trajectories, derivatives and line
    search live (the backward pass is numpy, on the CPU).
    """
    x0, U_init = problem.check_plan(x0, U_init)
    target = problem.check_states(target, "target", batch=x0.shape[0])
    if max_iter < 0 or tol < 0:
        raise ValueError(f"max_iter and tol must be non-negative, got {max_iter}, {tol}")
    with torch.no_grad(), one_thread():
        x0_t, tgt, U = (torch.from_numpy(a).to(device) for a in (x0, target, U_init))
        U = problem.clip_controls(U.clone())
        X = _smooth_rollout(problem, x0_t, U)
        J = objective_torch(problem, X, tgt, U, penalty)
        mu = torch.zeros(len(x0), dtype=DTYPE, device=U.device)
        active = torch.ones(len(x0), dtype=torch.bool, device=U.device)
        for _ in range(max_iter):
            idx = torch.nonzero(active).flatten()
            if len(idx) == 0:
                break
            out = _iterate(problem, penalty, X[idx], tgt[idx], U[idx], J[idx], mu[idx], tol)
            X[idx], U[idx], J[idx], mu[idx], done = out
            active[idx] = ~done
    return U.cpu().numpy(), J.cpu().numpy()


def objective_torch(problem: ControlProblem, states: Tensor, target: Tensor, U: Tensor,
                    penalty: Penalty | None = None) -> Tensor:
    """Cost plus penalty ``[B]`` of plans ``U [B, N, m]`` with trajectories ``states``."""
    terms = problem.cost_terms_torch(states, target, U)
    cost = terms["state"].sum(1) + terms["control"].sum(1) + terms["terminal"]
    return cost if penalty is None else cost + penalty(states, target)


class ILQRExpert(Expert):
    """`ilqr` from every plan of `initial_guesses`; per start the lowest-objective plan among
    those that succeed without violating a constraint (or the lowest overall where none does).
    The initial guesses themselves are candidates too, so the result is never worse than the
    best successful guess.

    An env's expert subclasses this: `initial_guesses` (default: clipped finite-horizon LQR of
    the linearisation at the target, and zeros), `screened_guesses` and `screen_keep` (a
    sampling stage; default none), `clearance_torch` and `barrier_stages` (hard state
    constraints; default none) and ``options`` (keyword settings of `ilqr`).
    """

    parallel = True
    options: ClassVar[dict[str, Any]] = {}
    # Hard state constraints, as the clearances ``[B, ...]`` of trajectories ``states
    # [B, N+1, n]`` (>= 0 where safe, e.g. each state's distance to each obstacle's edge): a
    # method ``clearance_torch(states)`` in subclasses, each entry depending on one state.
    clearance_torch: Callable[[Tensor], Tensor] | None = None
    # The barrier ``weight * sum max(0, margin - clearance)^2`` that iLQR minimises besides J,
    # as a continuation of ``(margin, weight)`` stages: the first is solved from every guess,
    # each later one from the previous stage's plan. A wide, soft first margin keeps the
    # solver clear of the constraints while it chooses a route; the later ones shrink the
    # margin (the price in J the plan pays for it) and stiffen the barrier, so that the plan
    # ends within about the last margin of the constraint without crossing it.
    barrier_stages: ClassVar[tuple[tuple[float, float], ...]] = ()
    # A sampling stage: a method ``screened_guesses(x0, target) -> [S, B, N, m]`` in subclasses
    # gives many cheap plans, of which the `screen_keep` of lowest J per start join the initial
    # guesses (on a swing-up, J ranks the basins well before any solve). None: no screening.
    screened_guesses: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    screen_keep: ClassVar[int] = 4

    def initial_guesses(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """Plans ``[B, N, m]`` to start iLQR from."""
        p = self.problem
        zeros = np.clip(np.zeros((len(x0), p.horizon, p.n_control)), p.u_low, p.u_high)
        return [clipped_lqr_plans(p, x0, target), zeros]

    def screen(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """The `screen_keep` plans ``[B, N, m]`` of `screened_guesses` with the lowest J per
        start (none without screening), screened `SCREEN_CHUNK` starts at a time."""
        if self.screened_guesses is None or self.screen_keep == 0:
            return []
        picks = []
        for i in range(0, len(x0), SCREEN_CHUNK):
            xs, ts = x0[i:i + SCREEN_CHUNK], target[i:i + SCREEN_CHUNK]
            plans = self.screened_guesses(xs, ts)
            S, B = plans.shape[:2]
            J = self.problem.cost(np.tile(xs, (S, 1)), np.tile(ts, (S, 1)),
                                  plans.reshape(S * B, *plans.shape[2:])).reshape(S, B)
            best = np.argsort(J, axis=0, kind="stable")[:self.screen_keep]  # [k, B]
            picks.append(plans[best, np.arange(B)])
        return list(np.concatenate(picks, axis=1))

    @property
    def keeps_margins(self) -> bool:
        return self.clearance_torch is not None and bool(self.barrier_stages)

    def barrier(self, stage: int) -> Penalty | None:
        """The barrier of ``barrier_stages[stage]`` (``(states, target) -> [B]``), its margin
        at least `margin`, or None on a problem without hard state constraints."""
        if not self.keeps_margins:
            return None
        margin, weight = self.barrier_stages[stage]
        margin = max(margin, self.margin)

        def penalty(states: Tensor, target: Tensor) -> Tensor:
            gap = torch.relu(margin - self.clearance_torch(states))
            return weight * (gap * gap).flatten(1).sum(1)

        return penalty

    def solve(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        problem = self.problem
        with one_thread():  # the guesses' closed-loop rollouts are small-tensor work too
            guesses = [np.clip(problem.check_plan(x0, g)[1], problem.u_low, problem.u_high)
                       for g in self.initial_guesses(x0, target) + self.screen(x0, target)]
            G, B = len(guesses), len(x0)
            if G == 0:
                raise ValueError(f"{type(self).__name__}: initial_guesses returned no plan")
            # All guesses in one batch: the solver's cost per iteration is mostly per-call
            # overhead.
            penalty = self.barrier(0)
            solved = ilqr(problem, np.tile(x0, (G, 1)), np.tile(target, (G, 1)),
                          np.concatenate(guesses), penalty=penalty, device=self.device,
                          **self.options)[0].reshape(G, B, *guesses[0].shape[1:])
            candidates = np.concatenate([np.stack(guesses), solved])  # [2G, B, N, m]
            scores = np.stack([self.score(x0, target, plan, penalty) for plan in candidates])
            best = candidates[scores.argmin(axis=0), np.arange(B)]
            for stage in range(1, len(self.barrier_stages)):
                penalty = self.barrier(stage)
                refined = ilqr(problem, x0, target, best, penalty=penalty, device=self.device,
                               **self.options)[0]
                better = (self.score(x0, target, refined, penalty)
                          <= self.score(x0, target, best, penalty))
                best = np.where(better[:, None, None], refined, best)
        return best

    def gains(self, x0: np.ndarray, target: np.ndarray, plans: np.ndarray) -> np.ndarray:
        p = self.problem
        return tracking_gains(p, p.check_states(x0, "x0"),
                              p.check_states(target, "target", len(x0)), plans,
                              self.barrier(-1))

    def score(self, x0: np.ndarray, target: np.ndarray, plan: np.ndarray,
              penalty: Penalty | None = None) -> np.ndarray:
        """The env's cost J plus ``penalty`` ``[B]`` (on the trajectory as the env runs it,
        ended at a failure), offset by 1e12 for plans that fail, so successes win."""
        problem = self.problem
        with torch.no_grad():
            x0_t, tgt, U = (torch.from_numpy(a).to(self.device) for a in (x0, target, plan))
            states = problem.rollout_torch(x0_t, U)
            value = problem.cost_torch(x0_t, tgt, U)
            if penalty is not None:
                value = value + penalty(states, tgt)
        states, value = states.cpu().numpy(), value.cpu().numpy()
        ok = problem.success(states, target) & ~problem.constraint_violations(states)
        return np.where(ok, value, 1e12 + value)


def tracking_gains(problem: ControlProblem, x0: np.ndarray, target: np.ndarray, U: np.ndarray,
                   penalty: Penalty | None = None) -> np.ndarray:
    """Feedback gains ``K [B, N, m, n]`` along plans ``U [B, N, m]`` from ``x0 [B, n]``: the
    gains of `ilqr`'s backward pass at the plan (zero on controls held at a bound), with the
    smallest Levenberg-Marquardt term in 0, 1e-6, 1e-4, ... that keeps every ``Quu``
    positive definite. At a locally optimal plan they are the time-varying LQR of the
    linearisation along it: the controller that tracks it."""
    with torch.no_grad(), one_thread():
        tgt, U_t = torch.from_numpy(target), torch.from_numpy(np.ascontiguousarray(U))
        X = _smooth_rollout(problem, torch.from_numpy(x0), U_t)
        derivs = _derivatives(problem, penalty, X, tgt, U_t)
        K = np.zeros((*U.shape, problem.n_state))
        todo = np.arange(len(x0))
        for mu in (0.0, *10.0 ** np.arange(-6, 11, 2)):
            idx = torch.from_numpy(todo)
            _, K_mu, _, _, ok = _backward(problem, U_t[idx], torch.full((len(todo),), mu),
                                          *(d[idx] for d in derivs[:-1]), derivs[-1])
            ok = ok.numpy()
            K[todo[ok]] = K_mu.numpy()[ok]
            todo = todo[~ok]
            if len(todo) == 0:
                break
    return K


def _smooth_rollout(problem: ControlProblem, x0: Tensor, U: Tensor) -> Tensor:
    """States ``[B, N+1, n]`` with the dynamics run on through failure states."""
    states = [x0]
    for t in range(U.shape[1]):
        states.append(problem.step_torch(states[-1], U[:, t]))
    return torch.stack(states, dim=1)


# ---------------------------------------------------------------------------- one iteration
def _iterate(problem, penalty, X, tgt, U, J, mu, tol):
    """One iLQR iteration on a batch of starts; returns the updated ``X, U, J, mu`` and which
    starts are done."""
    derivs = _derivatives(problem, penalty, X, tgt, U)
    k, K, dV1, dV2, ok = _backward(problem, U, mu, *derivs)
    X_new, U_new, J_new, improved = _line_search(problem, penalty, X, tgt, U, J, k, K, dV1, dV2,
                                                 ok)
    gain = torch.where(improved, J - J_new, torch.zeros_like(J))
    # Levenberg-Marquardt: relax after a successful step, stiffen after a failed one.
    mu = torch.where(improved, torch.where(mu / MU_FACTOR < MU_MIN, 0.0, mu / MU_FACTOR),
                     torch.clamp(mu * MU_FACTOR, min=MU_MIN))
    small = (-(dV1 + dV2) <= tol * (1.0 + J_new.abs())) & ok
    converged = improved & (gain <= tol * (1.0 + J_new.abs()))
    done = converged | (small & ~improved) | (mu > MU_MAX)
    return X_new, U_new, J_new, mu, done


def _derivatives(problem, penalty, X, tgt, U):
    """Dynamics Jacobians ``A [B, N, n, n]``, ``Bu [B, N, n, m]`` and the objective's
    derivatives ``lx [B, N+1, n]``, ``lxx [B, N+1, n, n]``, ``lu [B, N, m]``, ``luu [m, m]``."""
    Bsz, N, m = U.shape
    n = X.shape[-1]
    c = problem.constants(X)
    w = problem.cost_weight
    with torch.enable_grad():
        xs = X[:, :-1].reshape(-1, n).clone().requires_grad_(True)
        us = U.reshape(-1, m).clone().requires_grad_(True)
        nxt = problem.discrete_step(xs, us)
        rows = [torch.autograd.grad(nxt[:, i].sum(), (xs, us), retain_graph=i < n - 1)
                for i in range(n)]
        A = torch.stack([r[0] for r in rows], dim=1).reshape(Bsz, N, n, n)
        Bu = torch.stack([r[1] for r in rows], dim=1).reshape(Bsz, N, n, m)

        S = X.clone().requires_grad_(True)
        err = problem.state_error(S, tgt[:, None, :])
        E = _row_jacobian(err, S)  # d e_k / d x_k  [B, N+1, n, n]
        err = err.detach()
        weights = torch.cat([(w * c["Q"]).expand(N, n, n), c["Qf"][None]])  # [N+1, n, n]
        WE = weights @ E
        We = torch.einsum("kij,bkj->bki", weights, err)
        lx = 2.0 * torch.einsum("bkji,bkj->bki", E, We)
        lxx = 2.0 * E.transpose(-1, -2) @ WE

        if penalty is not None:
            S = X.clone().requires_grad_(True)
            total = penalty(S, tgt).sum()
            if total.requires_grad:
                grad = torch.autograd.grad(total, S, create_graph=True)[0]
                lx = lx + grad.detach()
                if grad.requires_grad:
                    lxx = lxx + _psd(_row_jacobian(grad, S))
    lu = 2.0 * w * U @ c["R"]
    luu = 2.0 * w * c["R"]
    return A, Bu, lx, lxx, lu, luu


def _row_jacobian(y: Tensor, S: Tensor) -> Tensor:
    """Per-state Jacobian blocks ``[..., n, n]`` of ``y [..., n]`` w.r.t. ``S [..., n]``, for
    ``y`` whose entry at one state depends on that state only."""
    n = y.shape[-1]
    rows = []
    for i in range(n):
        g = torch.autograd.grad(y[..., i].sum(), S, retain_graph=True, allow_unused=True)[0]
        rows.append(torch.zeros_like(S) if g is None else g)
    return torch.stack(rows, dim=-2).detach()


def _psd(H: Tensor) -> Tensor:
    """The nearest positive-semidefinite matrices of symmetric blocks ``[..., n, n]``."""
    H = 0.5 * (H + H.transpose(-1, -2))
    vals, vecs = torch.linalg.eigh(H)
    return (vecs * vals.clamp(min=0.0)[..., None, :]) @ vecs.transpose(-1, -2)


def _backward(problem, U, mu, A, Bu, lx, lxx, lu, luu):
    """Box-constrained backward pass (in numpy: many tiny batched products, where numpy's
    per-call overhead is lower than torch's). Returns feedforward ``k [B, N, m]``, gains
    ``K [B, N, m, n]``, the expected-change coefficients ``dV1, dV2 [B]`` and whether ``Quu +
    mu I`` was positive definite at every step ``[B]`` (all as tensors)."""
    device = U.device
    U, mu, A, Bu, lx, lxx, lu, luu = (t.cpu().numpy() for t in (U, mu, A, Bu, lx, lxx, lu, luu))
    Bsz, N, m = U.shape
    eye = np.eye(m)
    Vx, Vxx = lx[:, -1, :, None], lxx[:, -1]  # Vx as a column [B, n, 1]
    k_all = np.zeros_like(U)
    K_all = np.zeros((Bsz, N, m, A.shape[-1]))
    dV1, dV2 = np.zeros(Bsz), np.zeros(Bsz)
    ok = np.ones(Bsz, dtype=bool)
    AT, BT = A.swapaxes(-1, -2), Bu.swapaxes(-1, -2)
    lo_all, hi_all = problem.u_low - U, problem.u_high - U
    for t in range(N - 1, -1, -1):
        VxxA, VxxB = Vxx @ A[:, t], Vxx @ Bu[:, t]
        Qx = lx[:, t, :, None] + AT[:, t] @ Vx
        Qu = lu[:, t, :, None] + BT[:, t] @ Vx
        Qxx = lxx[:, t] + AT[:, t] @ VxxA
        Quu = luu + BT[:, t] @ VxxB
        Quu = 0.5 * (Quu + Quu.swapaxes(-1, -2))
        Qux = BT[:, t] @ VxxA
        H = Quu + mu[:, None, None] * eye
        if m == 1:
            pd = H[:, 0, 0] > 0.0
            H = np.where(pd[:, None, None], H, 1.0)
            k = np.clip(-Qu[:, :, 0] / H[:, 0], lo_all[:, t], hi_all[:, t])
            free = (k > lo_all[:, t]) & (k < hi_all[:, t])
            K = np.where(free[:, :, None], -Qux / H, 0.0)
        else:
            pd = np.linalg.eigvalsh(H)[:, 0] > 0.0
            H = np.where(pd[:, None, None], H, eye)  # keep the solves well posed
            k, free = (a.numpy() for a in box_qp(
                *(torch.from_numpy(np.ascontiguousarray(a)) for a in (
                    H, Qu[:, :, 0], lo_all[:, t], hi_all[:, t], k_all[:, t]))))
            pair = free[:, :, None] & free[:, None, :]
            K = np.linalg.solve(np.where(pair, H, eye), np.where(free[:, :, None], -Qux, 0.0))
        ok &= pd
        k_all[:, t], K_all[:, t] = k, K
        kc = k[:, :, None]
        KT = K.swapaxes(-1, -2)
        dV1 += (kc * Qu).sum((1, 2))
        dV2 += 0.5 * (kc * (Quu @ kc)).sum((1, 2))
        QuuK = Quu @ K
        Vx = Qx + KT @ (Quu @ kc) + KT @ Qu + Qux.swapaxes(-1, -2) @ kc
        Vxx = Qxx + KT @ QuuK + KT @ Qux + Qux.swapaxes(-1, -2) @ K
        Vxx = 0.5 * (Vxx + Vxx.swapaxes(-1, -2))
    return tuple(torch.from_numpy(a).to(device) for a in (k_all, K_all, dV1, dV2, ok))


def box_qp(H: Tensor, g: Tensor, lo: Tensor, hi: Tensor, start: Tensor | None = None,
           max_iter: int = 50) -> tuple[Tensor, Tensor]:
    """``argmin 1/2 z'Hz + g'z`` s.t. ``lo <= z <= hi`` for each row (``H [B, m, m]`` positive
    definite, ``g, lo, hi [B, m]``) by projected Newton with an Armijo line search (Tassa et
    al. 2014, Alg. 1). Returns ``z [B, m]`` and the free (not clamped) coordinates ``[B, m]``."""
    m = g.shape[-1]
    if m == 1:  # closed form
        z = torch.minimum(torch.maximum(-g / H[:, :, 0], lo), hi)
        return z, (z > lo) & (z < hi)
    eye = torch.eye(m, dtype=g.dtype)
    z = torch.linalg.solve(H, -g)
    inside = ((z >= lo) & (z <= hi)).all(-1)
    if bool(inside.all()):
        return z, torch.ones_like(z, dtype=torch.bool)
    out_free = torch.ones_like(z, dtype=torch.bool)
    todo = torch.nonzero(~inside).flatten()
    H, g, lo, hi = H[todo], g[todo], lo[todo], hi[todo]
    x = torch.minimum(torch.maximum(start[todo] if start is not None else z[todo], lo), hi)
    steps = torch.as_tensor(0.5 ** np.arange(20), dtype=g.dtype)[:, None, None]

    def value(v: Tensor) -> Tensor:
        return 0.5 * (v[..., None, :] @ H @ v[..., None])[..., 0, 0] + (g * v).sum(-1)

    for _ in range(max_iter):
        grad = (H @ x[..., None])[..., 0] + g
        clamped = ((x <= lo) & (grad > 0)) | ((x >= hi) & (grad < 0))
        free = ~clamped
        pair = free[:, :, None] & free[:, None, :]
        dx = torch.linalg.solve(torch.where(pair, H, eye), torch.where(free, -grad, 0.0))
        cand = torch.minimum(torch.maximum(x[None] + steps * dx[None], lo), hi)  # [S, B, m]
        f0 = value(x)
        armijo = value(cand) <= f0 + 0.1 * ((cand - x[None]) * grad).sum(-1)
        first = torch.where(armijo.any(0), armijo.float().argmax(0), -1)
        new = torch.where((first >= 0)[:, None], cand[first.clamp(min=0), torch.arange(len(x))], x)
        moved = (new - x).abs().max(-1).values > 1e-12
        x = new
        if not bool(moved.any()):
            break
    grad = (H @ x[..., None])[..., 0] + g
    clamped = ((x <= lo + 1e-12) & (grad > 0)) | ((x >= hi - 1e-12) & (grad < 0))
    z = z.clone()
    z[todo] = x
    out_free[todo] = ~clamped
    return z, out_free


def _line_search(problem, penalty, X, tgt, U, J, k, K, dV1, dV2, ok):
    """Backtracking line search over `STEP_GROUPS`: the full step ``alpha = 1`` for every start
    first, then, for starts where it fails the Armijo test, every smaller step at once (the
    best passing one wins). Returns the new ``X, U, J`` (unchanged where no step passed) and which
    starts improved ``[B]``."""
    X, U, J = X.clone(), U.clone(), J.clone()
    improved = torch.zeros_like(ok)
    rows = torch.nonzero(ok).flatten()
    for alphas in STEP_GROUPS:
        if len(rows) == 0:
            break
        a = torch.as_tensor(alphas, dtype=U.dtype, device=U.device)
        S, Uc, Jn = _rollouts(problem, penalty, X[rows], U[rows], k[rows], K[rows], a, tgt[rows])
        expected = -(a[:, None] * dV1[rows] + a[:, None] ** 2 * dV2[rows])  # [L, b]
        decrease = J[rows][None] - Jn
        accept = (decrease > 0) & (decrease >= ARMIJO * expected)
        best = torch.where(accept, Jn, torch.full_like(Jn, np.inf)).argmin(0)
        passed = accept.any(0)
        take, pick = rows[passed], best[passed]
        cols = torch.nonzero(passed).flatten()
        X[take], U[take], J[take] = S[pick, cols], Uc[pick, cols], Jn[pick, cols]
        improved[take] = True
        rows = rows[~passed]
    return X, U, J, improved


def _rollouts(problem, penalty, X, U, k, K, alphas, tgt):
    """Closed-loop rollouts ``u = clip(u_k + alpha k_k + K_k (x - x_k))`` for every step size in
    ``alphas [L]``: states ``[L, B, N+1, n]``, plans ``[L, B, N, m]``, objectives ``[L, B]``."""
    L = len(alphas)
    Bsz, N, m = U.shape
    alpha = alphas.repeat_interleave(Bsz)[:, None]  # [L*B, 1]
    Xr, Ur, kr, Kr = (t.repeat(L, *([1] * (t.dim() - 1))) for t in (X, U, k, K))
    x = Xr[:, 0]
    states, controls = [x], []
    for t in range(N):
        u = Ur[:, t] + alpha * kr[:, t] + (Kr[:, t] @ (x - Xr[:, t])[..., None])[..., 0]
        u = problem.clip_controls(u)
        x = problem.discrete_step(x, u)
        states.append(x)
        controls.append(u)
    S = torch.stack(states, 1)
    Uc = torch.stack(controls, 1)
    Jn = objective_torch(problem, S, tgt.repeat(L, 1), Uc, penalty)
    Jn = torch.where(torch.isfinite(Jn), Jn, torch.full_like(Jn, np.inf))
    return S.reshape(L, Bsz, N + 1, -1), Uc.reshape(L, Bsz, N, m), Jn.reshape(L, Bsz)
