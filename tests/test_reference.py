"""The CasADi/IPOPT reference (`trc_gym.experts.reference`): its dynamics and cost, written
again from the env docstrings, agree with the package's torch ones (two implementations
agreeing is what makes the reference trustworthy), its plans are successful and no costlier
than the zero plan and clipped LQR, and the iLQR expert is within tolerance of it."""

import importlib
import math
import sys
import warnings

import numpy as np
import pytest

import trc_gym
from trc_gym.envs import env_name
from trc_gym.experts import clipped_lqr_plans
from trc_gym.experts.reference import MODELS, reference_plans, symbolic_model

ENV_IDS = [f"TRC-{name}-v0" for name in MODELS]
# Two starts per env for the solver checks (default: two from the start box); the swing-ups
# include hanging.
FIXED_STARTS = {
    "TRC-Pendulum-v0": np.array([[math.pi, 0.0], [1.0, -1.0]]),
    "TRC-CartPole-v0": np.array([[0.0, 0.0, math.pi, 0.0], [0.4, -0.3, -2.0, 0.5]]),
}
# The lander's target is the pad with mass 0: no rest state to linearise clipped LQR about.
NO_LQR = {"TRC-Rocket-v0"}


def fixed_starts(env_id):
    problem = trc_gym.make_problem(env_id)
    x0 = FIXED_STARTS.get(env_id)
    if x0 is None:
        x0 = problem.sample_initial_states(np.random.default_rng(7), 2)
    return x0, problem.sample_targets(np.random.default_rng(7), len(x0))


def test_every_nonlinear_env_has_a_model():
    linear = {"DoubleIntegrator"}
    assert set(MODELS) == {env_name(i) for i in trc_gym.ENV_IDS} - linear
    assert all(trc_gym.make_problem(i).name == env_name(i) for i in ENV_IDS)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_dynamics_match_torch(env_id):
    """One CasADi step equals `problem.step` (float64) on random states (the start box,
    doubled about its centre) and controls within the box."""
    problem = trc_gym.make_problem(env_id)
    model = symbolic_model(problem.name)
    rng = np.random.default_rng(0)
    centre = 0.5 * (problem.state_low + problem.state_high)
    half = problem.state_high - problem.state_low
    x = rng.uniform(centre - half, centre + half, (64, problem.n_state))
    u = rng.uniform(problem.u_low, problem.u_high, (64, problem.n_control))
    ours = np.asarray(model.step.map(64)(x.T, u.T)).T
    np.testing.assert_allclose(ours, problem.step(x, u), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_cost_matches_torch(env_id):
    """The CasADi cost of random plans within the box equals `problem.cost` where the plan
    reaches no failure state (where it does, the env's cost freezes the trajectory)."""
    problem = trc_gym.make_problem(env_id)
    model = symbolic_model(problem.name)
    rng = np.random.default_rng(1)
    x0, target = trc_gym.held_out_starts(env_id, 32, 5)
    U = rng.uniform(problem.u_low, problem.u_high, (32, problem.horizon, problem.n_control))
    states = problem.rollout(x0, U)
    clean = problem.alive_mask(states).all(1) & ~problem.constraint_violations(states)
    assert clean.sum() >= 8
    ours = np.array([float(model.cost(x0[b], target[b], U[b].T)) for b in np.flatnonzero(clean)])
    np.testing.assert_allclose(ours, problem.cost(x0, target, U)[clean], rtol=1e-10)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reference_plans_succeed_and_beat_zero_and_lqr(env_id):
    problem = trc_gym.make_problem(env_id)
    x0, target = fixed_starts(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no start without a successful plan
        U, J = reference_plans(problem, x0, target)
    assert U.shape == (len(x0), problem.horizon, problem.n_control)
    assert np.all(U >= problem.u_low) and np.all(U <= problem.u_high)
    np.testing.assert_allclose(J, problem.cost(x0, target, U), rtol=1e-12)
    states = problem.rollout(x0, U)
    assert problem.success(states, target).all()
    assert not problem.constraint_violations(states).any()
    baselines = {"zero": np.zeros_like(U)}
    if env_id not in NO_LQR:
        baselines["clipped LQR"] = clipped_lqr_plans(problem, x0, target)
    # No costlier than the baselines where they succeed, and (on these starts) where they do
    # not either (their J then includes any failure penalty).
    for name, plans in baselines.items():
        cost = problem.cost(x0, target, plans)
        assert np.all(J <= cost * (1.0 + 1e-9)), (name, J, cost)


def test_guesses_are_checked():
    x0, target = fixed_starts("TRC-VanDerPol-v0")
    problem = trc_gym.make_problem("TRC-VanDerPol-v0")
    with pytest.raises(ValueError, match="U has shape"):
        reference_plans(problem, x0, target, guesses=[np.zeros((2, 5, 1))])
    with pytest.raises(ValueError, match="no reference model"):
        reference_plans(trc_gym.make_problem("TRC-DoubleIntegrator-v0"), x0, target)


def test_a_start_without_success_is_flagged():
    """Van der Pol's rest at x* = 20 needs a force of 20, beyond the bound: no plan succeeds,
    the cheapest comes back with a warning."""
    x0 = np.array([[1.0, 0.0]])
    with pytest.warns(RuntimeWarning, match=r"no successful.*start\(s\) \[0\]"):
        U, J = reference_plans(trc_gym.make_problem("TRC-VanDerPol-v0"), x0,
                               np.array([[20.0, 0.0]]))
    assert np.isfinite(J).all() and np.all(np.abs(U) <= 2.0)


def test_missing_casadi_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "casadi", None)  # `import casadi` now fails
    monkeypatch.delitem(sys.modules, "trc_gym.experts.reference")
    with pytest.raises(ImportError, match="pip install casadi"):
        importlib.import_module("trc_gym.experts.reference")


# Starts on which the expert is checked against the reference (default: three held-out ones):
# the swing-ups' include starts where a weaker global strategy settles in a worse optimum
# (a pendulum near hanging, poles falling or far from upright).
EXPERT_STARTS = {
    "TRC-Pendulum-v0": np.array([[-3.086, 0.468], [2.2289, 0.2032], [math.pi, 0.0]]),
    "TRC-CartPole-v0": np.array([[0.310, 0.083, 0.276, 0.451], [-0.491, 0.234, 2.079, 0.182],
                                 [0.432, 0.2248, 2.2654, 0.4293]]),
    "TRC-ObstacleNav-v0": np.array([[-3.6615, -1.5993, 0.3622, -0.3217],
                                    [-4.0, 0.0, 0.0, 0.0], [-3.8, 1.5, 0.2, -0.3]]),
}
# The largest excess of the expert's J over the reference's allowed on any of those starts:
# exact on Van der Pol, the barrier margin's price on ObstacleNav.
EXPERT_TOLERANCE = {"TRC-VanDerPol-v0": 1e-6, "TRC-Pendulum-v0": 0.01, "TRC-CartPole-v0": 0.01,
                    "TRC-Quadrotor2D-v0": 5e-4, "TRC-Rocket-v0": 5e-4,
                    "TRC-ObstacleNav-v0": 5e-3}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_the_expert_is_within_tolerance_of_the_reference(env_id):
    """The expert's plan costs at most `EXPERT_TOLERANCE` more than the best the reference
    finds (from the expert's plan, zeros and its own guesses), and succeeds."""
    expert = trc_gym.make_expert(env_id)
    problem = expert.problem
    x0 = EXPERT_STARTS.get(env_id)
    if x0 is None:
        x0 = trc_gym.held_out_starts(env_id, 3, 12345)[0]
    target = problem.sample_targets(np.random.default_rng(0), len(x0))
    plans = expert.plan(x0, target)
    states = problem.rollout(x0, plans)
    assert (problem.success(states, target) & ~problem.constraint_violations(states)).all()
    _, best = reference_plans(problem, x0, target, guesses=[plans])
    excess = problem.cost(x0, target, plans) / best - 1.0
    assert excess.max() <= EXPERT_TOLERANCE[env_id], f"{env_id}: excess {excess}"
