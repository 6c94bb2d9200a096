"""The double integrator's dynamics and its exact expert, checked against independent solutions."""

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear, minimize

import trc_gym
from trc_gym.experts.lqr import (
    BoxQPExpert,
    box_qp_of,
    clipped_lqr_plans,
    finite_horizon_lqr,
    solve_box_qp,
)
from trc_gym.problem import stacked_prediction

DI = "TRC-DoubleIntegrator-v0"


@pytest.fixture
def problem():
    return trc_gym.make_problem(DI)


def test_zero_order_hold_step_keeps_dt_squared_term(problem):
    dt = 0.33
    x = np.array([[0.5, -1.0]])
    u = np.array([[2.0]])
    expected = [0.5 - 1.0 * dt + 2.0 * dt**2 / 2, -1.0 + 2.0 * dt]
    np.testing.assert_allclose(problem.step(x, u)[0], expected, rtol=1e-12)


def test_numpy_and_torch_dynamics_agree(problem):
    rng = np.random.default_rng(0)
    x0 = problem.sample_initial_states(rng, 64)
    U = rng.uniform(-5, 5, (64, 15, 1))
    states_np = problem.rollout(x0, U)
    states_t32 = problem.rollout_torch(torch.tensor(x0, dtype=torch.float32),
                                       torch.tensor(U, dtype=torch.float32))
    np.testing.assert_allclose(states_t32.numpy(), states_np, rtol=1e-4, atol=1e-4)
    target = problem.sample_targets(rng, 64)
    cost_t = problem.cost_torch(*(torch.tensor(a) for a in (x0, target, U)))
    np.testing.assert_allclose(cost_t.numpy(), problem.cost(x0, target, U), rtol=1e-12)


def test_cost_gradient_matches_finite_differences(problem):
    x0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    target = torch.zeros(1, 2, dtype=torch.float64)
    U = torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(1, 15, 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda u: problem.cost_torch(x0, target, u), (U,))


def _qp_cost(problem, x0, target, U):
    return problem.cost(x0[None], target[None], U.reshape(1, 15, 1))[0]


def test_expert_equals_independent_bounded_least_squares(problem):
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-2, 2, (40, 2)) * 1.5  # wider than training: more active bounds
    target = np.c_[rng.uniform(-2, 2, 40), np.zeros(40)]
    U = trc_gym.expert_plan(DI, x0, target)
    H, g, _, lo, hi = box_qp_of(problem, x0, target)
    L = np.linalg.cholesky(H)
    active = 0
    for i in range(len(x0)):
        ref = lsq_linear(L.T, -np.linalg.solve(L, g[i]), bounds=(lo, hi), method="trf",
                         tol=1e-12, lsmr_tol="auto").x
        cost_ref = _qp_cost(problem, x0[i], target[i], ref)
        assert _qp_cost(problem, x0[i], target[i], U[i]) <= cost_ref * (1 + 1e-9)
        np.testing.assert_allclose(U[i, :, 0], ref, atol=1e-5)
        active += np.any(np.abs(U[i]) >= 4 - 1e-9)
    assert active >= 10  # the bound really binds on many of these starts


def test_stacked_qp_cost_equals_problem_cost(problem):
    rng = np.random.default_rng(2)
    x0 = problem.sample_initial_states(rng, 5)
    target = np.c_[rng.uniform(-2, 2, 5), np.zeros(5)]
    U = rng.uniform(-4, 4, (5, 15, 1))
    H, g, c, _, _ = box_qp_of(problem, x0, target)
    z = U.reshape(5, -1)
    qp = 0.5 * np.einsum("bi,ij,bj->b", z, H, z) + np.einsum("bi,bi->b", g, z) + c
    np.testing.assert_allclose(qp, problem.cost(x0, target, U), rtol=1e-10)
    Phi, Gamma = stacked_prediction(problem.A, problem.B, 15)
    X = x0 @ Phi.T + z @ Gamma.T
    np.testing.assert_allclose(X.reshape(5, 16, 2), problem.rollout(x0, U), atol=1e-12)


def test_random_feasible_perturbations_cost_more(problem):
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-3, 3, (20, 2))
    target = np.zeros((20, 2))
    U = trc_gym.expert_plan(DI, x0, target)
    best = problem.cost(x0, target, U)
    for scale in (1e-3, 1e-1, 1.0):
        for _ in range(20):
            V = np.clip(U + scale * rng.standard_normal(U.shape), -4, 4)
            assert np.all(problem.cost(x0, target, V) >= best - 1e-9)


def test_unconstrained_qp_equals_riccati_lqr(problem):
    """With the bound inactive, the QP optimum is the finite-horizon LQR's plan."""
    rng = np.random.default_rng(4)
    x0 = rng.uniform(-0.5, 0.5, (10, 2))
    target = np.zeros((10, 2))
    H, g, _, lo, hi = box_qp_of(problem, x0, target)
    z, fallback = solve_box_qp(H, g, lo * 100, hi * 100)
    lqr = clipped_lqr_plans(problem, x0, target)
    assert np.all(np.abs(lqr) < 4)
    np.testing.assert_allclose(z.reshape(10, 15, 1), lqr, atol=1e-9)
    assert not fallback.any()
    K = finite_horizon_lqr(problem.A, problem.B, problem.Q, problem.R, problem.Qf, 15)
    assert K.shape == (15, 1, 2)


def test_box_qp_matches_lbfgsb_on_random_qps():
    """The active-set solver against an independent optimiser on random ill-posed boxes."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        M = rng.standard_normal((8, 8))
        H = M @ M.T + 0.1 * np.eye(8)
        g = rng.standard_normal((1, 8)) * 5
        lo, hi = -np.ones(8), np.ones(8)
        z, fallback = solve_box_qp(H, g, lo, hi)
        ref = minimize(lambda v, H=H, g=g: 0.5 * v @ H @ v + g[0] @ v, np.zeros(8),
                       jac=lambda v, H=H, g=g: H @ v + g[0], bounds=list(zip(lo, hi)),
                       method="L-BFGS-B",
                       options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})
        assert not fallback.any()
        assert 0.5 * z[0] @ H @ z[0] + g[0] @ z[0] <= ref.fun + 1e-9


def test_expert_meets_spec_on_held_out_starts():
    x0, target = trc_gym.held_out_starts(DI, 500)
    problem = trc_gym.make_problem(DI)
    U = trc_gym.expert_plan(DI, x0, target)
    states = problem.rollout(x0, U)
    assert problem.success(states, target).all()
    assert np.all(np.abs(U) <= 4 + 1e-12)


def test_random_target_option():
    problem = trc_gym.make_problem(DI, random_target=True)
    targets = problem.sample_targets(np.random.default_rng(0), 100)
    assert np.all(targets[:, 1] == 0) and targets[:, 0].std() > 0.5
    U = BoxQPExpert(problem).plan(
        problem.sample_initial_states(np.random.default_rng(1), 100), targets)
    assert U.shape == (100, 15, 1)


def test_bad_problem_inputs_raise(problem):
    with pytest.raises(ValueError, match=r"U has shape \[2, 14, 1\], expected \[2, 15, 1\]"):
        problem.rollout(np.zeros((2, 2)), np.zeros((2, 14, 1)))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        problem.rollout(np.array([[np.nan, 0.0]]), np.zeros((1, 15, 1)))
    with pytest.raises(ValueError, match="target has shape"):
        problem.cost(np.zeros((2, 2)), np.zeros((3, 2)), np.zeros((2, 15, 1)))
    with pytest.raises(ValueError, match="x0 has shape"):
        trc_gym.expert_plan(DI, np.zeros((4, 3)), np.zeros((4, 3)))


def test_the_pinned_first_control_cost_is_the_optimum_given_that_control(problem, monkeypatch):
    """``Q*(x0, u0)`` of examples/critic_precision.py: J* at the optimal first control, above it
    elsewhere, and equal to L-BFGS-B over the remaining controls."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "examples"))
    from critic_precision import pinned_first_control_cost

    x0, target = trc_gym.held_out_starts("TRC-DoubleIntegrator-v0", 3)
    optimal = trc_gym.make_expert("TRC-DoubleIntegrator-v0").plan(x0, target)
    best = problem.cost(x0, target, optimal)
    np.testing.assert_allclose(pinned_first_control_cost(problem, x0, target, optimal[:, 0]),
                               best, rtol=1e-9)
    u0 = optimal[:, 0] - 0.7 * np.sign(optimal[:, 0])  # 0.7 toward zero: inside the box
    pinned = pinned_first_control_cost(problem, x0, target, u0)
    assert np.all(pinned > best)
    for i in range(3):
        def cost(rest, i=i):
            plan = np.concatenate([u0[i], rest])[None, :, None]
            return problem.cost(x0[i:i + 1], target[i:i + 1], plan)[0]

        found = minimize(cost, optimal[i, 1:, 0], method="L-BFGS-B",
                         bounds=[(-4.0, 4.0)] * (problem.horizon - 1), options={"ftol": 1e-14})
        assert pinned[i] == pytest.approx(found.fun, rel=1e-6)
