"""The iLQR solver itself: the box QP of its backward pass (against L-BFGS-B), exactness on a
linear problem (against the exact box-constrained QP), first-order optimality on Van der Pol,
penalties steering around an obstacle, and bad input."""

import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import trc_gym
from trc_gym.experts import ILQRExpert, box_qp, clipped_lqr_plans, ilqr
from trc_gym.problem import ControlProblem

VDP = "TRC-VanDerPol-v0"


@pytest.mark.parametrize("m", [1, 2, 3])
def test_box_qp_matches_bounded_lbfgs(m):
    rng = np.random.default_rng(m)
    B = 60
    M = rng.normal(size=(B, m, m))
    H = M @ M.transpose(0, 2, 1) + 0.1 * np.eye(m)
    g = 3.0 * rng.normal(size=(B, m))
    lo, hi = -rng.uniform(0, 1, (B, m)), rng.uniform(0, 1, (B, m))
    z, free = (a.numpy() for a in box_qp(*(torch.from_numpy(a) for a in (H, g, lo, hi))))
    assert np.all(z >= lo - 1e-12) and np.all(z <= hi + 1e-12)
    for i in range(B):
        def f(v, i=i):
            return 0.5 * v @ H[i] @ v + g[i] @ v, H[i] @ v + g[i]
        ref = minimize(f, np.zeros(m), jac=True, bounds=list(zip(lo[i], hi[i])),
                       method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12})
        assert f(z[i])[0] <= ref.fun + 1e-9
        # Free coordinates are strictly inside the box.
        assert np.all((z[i][free[i]] > lo[i][free[i]]) & (z[i][free[i]] < hi[i][free[i]]))


def test_ilqr_is_exact_on_the_linear_problem():
    """On the double integrator the cost is a convex QP in U: iLQR from zeros must reach the
    exact box-QP optimum (the bound is active on many of these starts)."""
    env_id = "TRC-DoubleIntegrator-v0"
    problem = trc_gym.make_problem(env_id)
    x0, target = trc_gym.held_out_starts(env_id, 40)
    exact = problem.cost(x0, target, trc_gym.expert_plan(env_id, x0, target))
    U, objective = ilqr(problem, x0, target, np.zeros((40, problem.horizon, 1)))
    np.testing.assert_allclose(objective, problem.cost(x0, target, U), rtol=1e-12)
    np.testing.assert_allclose(objective, exact, rtol=1e-9, atol=1e-9)
    assert np.any(np.isclose(np.abs(U), 4.0))  # saturated controls were handled


def test_ilqr_plans_satisfy_kkt_on_van_der_pol():
    """First-order optimality of the plans in the box: the exact torch gradient of J vanishes
    on free controls and points outwards on saturated ones."""
    problem = trc_gym.make_problem(VDP)
    x0, target = trc_gym.held_out_starts(VDP, 16)
    U, _ = ilqr(problem, x0, target, clipped_lqr_plans(problem, x0, target))
    Ut = torch.tensor(U, requires_grad=True)
    problem.cost_torch(torch.tensor(x0), torch.tensor(target), Ut).sum().backward()
    grad = Ut.grad.numpy()
    at_low, at_high = U <= -2.0 + 1e-9, U >= 2.0 - 1e-9
    assert at_low.any() or at_high.any()  # the bound matters on these starts
    scale = 1e-4 * np.abs(grad).max()
    assert np.all(np.abs(grad[~at_low & ~at_high]) < scale)
    assert np.all(grad[at_low] > -scale) and np.all(grad[at_high] < scale)


def test_objective_never_increases_and_iterations_help():
    problem = trc_gym.make_problem(VDP)
    x0, target = trc_gym.held_out_starts(VDP, 16)
    lqr = clipped_lqr_plans(problem, x0, target)
    start = problem.cost(x0, target, lqr)
    one = ilqr(problem, x0, target, lqr, max_iter=1)[1]
    full = ilqr(problem, x0, target, lqr)[1]
    assert np.all(one <= start + 1e-12) and np.all(full <= one + 1e-12)
    assert full.mean() < start.mean()
    np.testing.assert_array_equal(ilqr(problem, x0, target, lqr, max_iter=0)[1], start)


class _ObstacleProblem(ControlProblem):
    """A 2-D point mass that must pass a disc of radius 1 at the origin."""

    def __init__(self):
        super().__init__(
            name="obstacle", state_names=("x", "y", "vx", "vy"), control_names=("ax", "ay"),
            dt=0.1, horizon=40, Q=np.diag([1.0, 1.0, 0.1, 0.1]), R=0.1 * np.eye(2),
            Qf=100.0 * np.eye(4), u_low=[-2.0, -2.0], u_high=[2.0, 2.0],
            state_low=[-3.0, -0.2, 0.0, 0.0], state_high=[-2.5, 0.2, 0.0, 0.0], tolerance=0.1,
            cost_weight=0.1)

    def dynamics(self, x, u):
        return torch.cat([x[..., 2:], u], dim=-1)

    def sample_targets(self, rng, size):
        return np.tile([3.0, 0.0, 0.0, 0.0], (size, 1))


class _ObstacleExpert(ILQRExpert):
    """iLQR with a barrier around the disc (a penalty outside J)."""

    barrier_stages = ((0.0, 1000.0),)

    def clearance_torch(self, states):
        return torch.linalg.norm(states[..., :2], dim=-1) - 1.0


def test_penalty_steers_the_plan_around_an_obstacle():
    problem = _ObstacleProblem()
    rng = np.random.default_rng(0)
    x0 = problem.sample_initial_states(rng, 6)
    target = problem.sample_targets(rng, 6)
    x0[0, 1] = 0.05  # nearly head-on
    U = _ObstacleExpert(problem).plan(x0, target)
    assert ILQRExpert(problem).plan(x0[:1], target[:1]).shape == U[:1].shape  # no barrier
    states = problem.rollout(x0, U)
    assert np.linalg.norm(states[..., :2], axis=-1).min() > 0.95  # stayed (almost) outside
    assert problem.success(states, target).all()
    assert np.all(np.abs(U) <= 2.0)


def test_chunks_solved_in_processes_are_the_chunks_solved_here(monkeypatch):
    """`Expert.plan_in_chunks` makes the same calls in worker processes as in this one, so
    the same plans; the chunking only changes float rounding against one batched call."""
    import trc_gym.experts.base as base

    pools = []

    class CountedPool(base.ProcessPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(base, "ProcessPoolExecutor", CountedPool)
    expert = trc_gym.make_expert(VDP)
    x0, target = trc_gym.held_out_starts(VDP, 7)
    done = []
    in_processes = expert.plan_in_chunks(x0, target, workers=2, chunk_size=3,
                                         on_chunk=done.append)
    assert pools == [2] and done == [3, 3, 1]
    np.testing.assert_array_equal(in_processes, expert.plan_in_chunks(x0, target, chunk_size=3))
    assert pools == [2]  # one worker: no pool
    np.testing.assert_allclose(in_processes, expert.plan(x0, target), rtol=0, atol=1e-9)


def test_bad_input_raises():
    problem = trc_gym.make_problem(VDP)
    with pytest.raises(ValueError, match="U has shape"):
        ilqr(problem, np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 5, 1)))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        ilqr(problem, np.full((1, 2), np.nan), np.zeros((1, 2)), np.zeros((1, 100, 1)))
    with pytest.raises(ValueError, match="max_iter"):
        ilqr(problem, np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 100, 1)), max_iter=-1)


def test_module_and_function_names():
    """``trc_gym.experts.ilqr`` is the function; the module stays importable by path."""
    from trc_gym.experts.ilqr import ilqr as direct

    assert direct is ilqr and sys.modules["trc_gym.experts.ilqr"].ILQRExpert is ILQRExpert
