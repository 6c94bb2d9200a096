"""TRC-Quadrotor2D-v0, TRC-Rocket-v0 and TRC-ObstacleNav-v0: dynamics against independent
references, autodiff against finite differences, env return against the batched cost (a
collision and a crash included), the iLQR expert's local optimality and success, and the
base-env extensions they need (observation extras, early termination on failure).

Gymnasium's and SB3's `check_env`, seeding, rendering and the env/batched agreement on random
plans run for every registered id in test_envs.py.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import trc_gym
from trc_gym import datasets, evaluation
from trc_gym.cli import main as trc_main
from trc_gym.envs import make_problem
from trc_gym.envs.obstacle_nav import GOAL, OBSTACLES
from trc_gym.envs.quadrotor_2d import ARM, HOVER, INERTIA, MASS
from trc_gym.envs.rocket import EXHAUST
from trc_gym.planning_policy import PlanningPolicy

QUAD, ROCKET, NAV = "TRC-Quadrotor2D-v0", "TRC-Rocket-v0", "TRC-ObstacleNav-v0"
HARD = [QUAD, ROCKET, NAV]
N_FAST = 4  # held-out starts solved in the default suite (once per module)


@pytest.fixture(scope="module")
def expert_cache():
    """``env_id -> (x0, target, U)``: expert plans on the first held-out starts (solved once)."""
    cache = {}

    def get(env_id):
        if env_id not in cache:
            torch.set_num_threads(1)
            x0, target = trc_gym.held_out_starts(env_id, N_FAST)
            cache[env_id] = (x0, target, trc_gym.expert_plan(env_id, x0, target))
        return cache[env_id]

    return get


# ------------------------------------------------------------------ independent references
def quadrotor_reference(t, s, u):
    _, _, th, vx, vz, w = s
    total = u[0] + u[1]
    return [vx, vz, w, -total * np.sin(th) / MASS, total * np.cos(th) / MASS - 9.81,
            ARM * (u[1] - u[0]) / INERTIA]


def rocket_reference(t, s, u):
    """The exact norm in the mass flow (the problem smooths it by 1e-6 kN^2)."""
    v, m = s[3:6], s[6]
    acc = np.asarray(u) / m + np.array([0.0, 0.0, -3.71])
    return [*v, *acc, -np.linalg.norm(u) / (200.7 * 9.81)]


REFERENCES = {QUAD: quadrotor_reference, ROCKET: rocket_reference}


def random_inputs(problem, rng, size):
    """States from the start box and controls strictly inside the bound."""
    x = problem.sample_initial_states(rng, size)
    span = problem.u_high - problem.u_low
    u = rng.uniform(problem.u_low + 0.05 * span, problem.u_high - 0.05 * span,
                    (size, problem.n_control))
    return x, u


@pytest.mark.parametrize("env_id", [QUAD, ROCKET])
def test_continuous_dynamics_match_an_independent_integration(env_id):
    problem = make_problem(env_id)
    x, u = random_inputs(problem, np.random.default_rng(0), 6)
    stepped = problem.step(x, u)
    for i in range(len(x)):
        exact = solve_ivp(REFERENCES[env_id], (0.0, problem.dt), x[i], args=(u[i],),
                          method="DOP853", rtol=1e-11, atol=1e-11).y[:, -1]
        # RK4's local error (the quadrotor's random thrust differences spin it at up to 300
        # rad/s^2), and for the rocket at most sqrt(1e-6) kN / EXHAUST * dt of mass.
        np.testing.assert_allclose(stepped[i], exact, rtol=1e-3, atol=1e-3)


def test_obstacle_nav_step_is_the_exact_zero_order_hold():
    problem = make_problem(NAV)
    x, u = random_inputs(problem, np.random.default_rng(1), 5)
    dt = problem.dt
    expected = np.concatenate([x[:, :2] + x[:, 2:] * dt + 0.5 * u * dt**2, x[:, 2:] + u * dt], 1)
    np.testing.assert_allclose(problem.step(x, u), expected, rtol=1e-12, atol=1e-12)


def test_rocket_mass_flow_and_units():
    """m' = -||T|| / (Isp g0) with T in kN and m in t: 10 kN for 1 s burns 5.08 kg."""
    problem = make_problem(ROCKET)
    x = np.array([[0.0, 0.0, 500.0, 0.0, 0.0, 0.0, 2.0]])
    after = problem.step(x, np.array([[3.0, 4.0, np.sqrt(75.0)]]))  # |T| = 10 kN
    assert 1000.0 * (x[0, 6] - after[0, 6]) == pytest.approx(10.0 / EXHAUST * 1000.0, rel=1e-6)
    assert 10.0 / EXHAUST * 1000.0 == pytest.approx(5.079, abs=1e-3)
    # Thrust 3.71 kN per tonne holds the lander (to the small mass loss): hover.
    hover = problem.step(x, np.array([[0.0, 0.0, 3.71 * 2.0]]))
    assert abs(hover[0, 5]) < 0.01 and abs(hover[0, 2] - 500.0) < 0.01


def test_quadrotor_hover_is_an_equilibrium_and_torque_sign():
    problem = make_problem(QUAD)
    x = np.array([[0.3, -0.2, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(problem.step(x, np.full((1, 2), HOVER)), x, atol=1e-12)
    # More thrust on the right rotor pitches counter-clockwise, and the body then drifts to -x.
    for _ in range(5):
        x = problem.step(x, np.array([[HOVER - 0.1, HOVER + 0.1]]))
    assert x[0, 5] > 0.0 and x[0, 2] > 0.0 and x[0, 3] < 0.0


@pytest.mark.parametrize("env_id", HARD)
def test_float32_torch_rollout_matches_float64_numpy(env_id, expert_cache):
    problem = make_problem(env_id)
    x0, _, U = expert_cache(env_id)
    reference = problem.rollout(x0, U)
    with torch.no_grad():
        single = problem.rollout_torch(torch.as_tensor(x0, dtype=torch.float32),
                                       torch.as_tensor(U, dtype=torch.float32)).numpy()
    scale = np.abs(reference).max(axis=(0, 1)) + 1.0
    assert np.all(np.abs(single - reference) / scale < 1e-3)


# ------------------------------------------------------------------ derivatives
@pytest.mark.parametrize("env_id", HARD)
def test_jacobians_match_finite_differences(env_id):
    problem = make_problem(env_id)
    x, u = random_inputs(problem, np.random.default_rng(2), 3)
    jac_x, jac_u = problem.jacobians(x, u)
    for which, point, jac in (("x", x, jac_x), ("u", u, jac_u)):
        for j in range(point.shape[1]):
            h = 1e-6 * (1.0 + np.abs(point[:, j]))
            plus, minus = point.copy(), point.copy()
            plus[:, j] += h
            minus[:, j] -= h
            if which == "x":
                fd = (problem.step(plus, u) - problem.step(minus, u)) / (2 * h[:, None])
            else:
                fd = (problem.step(x, plus) - problem.step(x, minus)) / (2 * h[:, None])
            np.testing.assert_allclose(jac[:, :, j], fd, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{env_id}: d x+ / d {which}[{j}]")


@pytest.mark.parametrize("env_id", HARD)
def test_cost_gradient_matches_finite_differences(env_id, expert_cache):
    problem = make_problem(env_id)
    x0, target, U = expert_cache(env_id)
    x0, target, U = x0[:2], target[:2], U[:2]
    span = problem.u_high - problem.u_low
    direction = np.random.default_rng(3).standard_normal(U.shape) * span
    # Move into the interior so that clipping does not cut the direction.
    U = np.clip(U, problem.u_low + 0.01 * span, problem.u_high - 0.01 * span)
    Ut = torch.tensor(U, requires_grad=True)
    problem.cost_torch(torch.as_tensor(x0), torch.as_tensor(target), Ut).sum().backward()
    analytic = float((Ut.grad.numpy() * direction).sum())
    h = 1e-7
    numeric = (problem.cost(x0, target, U + h * direction).sum()
               - problem.cost(x0, target, U - h * direction).sum()) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------ env vs batched cost
def step_through_env(env_id, x0, target, plan):
    """Episode return, visited states and the last info of ``plan [N, m]`` stepped in the env."""
    env = gym.make(env_id)
    _, info = env.reset(options={"state": x0, "target": target})
    total, visited = 0.0, [info["state"]]
    for k in range(len(plan)):
        _, reward, terminated, truncated, info = env.step(plan[k])  # float64: exact
        total += reward
        visited.append(info["state"])
        if terminated or truncated:
            break
    assert terminated and not truncated
    return total, np.array(visited), info, env


@pytest.mark.parametrize("env_id", HARD)
def test_expert_plans_succeed_through_the_env(env_id, expert_cache):
    """The fast fixed set: open-loop expert plans stepped through gym.make all succeed, and
    the return is exactly minus the batched cost."""
    problem = make_problem(env_id)
    x0, target, U = expert_cache(env_id)
    costs = problem.cost(x0, target, U)
    for i in range(len(x0)):
        total, visited, info, _ = step_through_env(env_id, x0[i], target[i], U[i])
        assert len(visited) == problem.horizon + 1
        assert info["success"] and not info["failed"], f"{env_id} start {i}: {info}"
        assert -total == pytest.approx(costs[i], rel=1e-7)
        if env_id == ROCKET:
            fuel = problem.fuel_used(problem.rollout(x0[i:i + 1], U[i:i + 1]))[0]
            assert info["fuel_used"] == pytest.approx(fuel) and 50.0 < fuel < 400.0


def expert_episodes(env_id, expert_cache):
    """``(target, Episodes)`` of the cached expert plans, rolled out open loop."""
    x0, target, U = expert_cache(env_id)
    return target, evaluation.Episodes(U, make_problem(env_id).rollout(x0, U), np.zeros(len(x0)))


def test_the_evaluation_reports_the_rockets_fuel_as_the_env_counts_it(expert_cache):
    metrics = evaluation.trajectory_metrics(make_problem(ROCKET),
                                            *expert_episodes(ROCKET, expert_cache))
    x0, target, U = expert_cache(ROCKET)
    stepped = [step_through_env(ROCKET, x0[i], target[i], U[i])[2]["fuel_used"]
               for i in range(len(x0))]
    assert metrics["fuel_used"] == pytest.approx(np.mean(stepped), rel=1e-6)
    table = trc_gym.format_table({"expert": metrics})
    assert "fuel (kg)" in table and f"{metrics['fuel_used']:.1f}" in table
    assert "fuel_used" not in evaluation.trajectory_metrics(make_problem(NAV),
                                                            *expert_episodes(NAV, expert_cache))


def check_failed_episode(env_id, x0, target, plan, penalty):
    """Step ``plan`` (which must fail early) through the env and compare with the batched
    rollout and cost; returns the failure step."""
    problem = make_problem(env_id)
    total, visited, info, env = step_through_env(env_id, x0, target, plan)
    k = len(visited) - 1
    assert k < problem.horizon and info["failed"] and not info["success"]
    states = problem.rollout(x0[None], plan[None])[0]
    np.testing.assert_allclose(visited, states[:k + 1], rtol=1e-12)
    np.testing.assert_allclose(states[k:], np.broadcast_to(states[k], states[k:].shape))
    cost = problem.cost(x0[None], target[None], plan[None])[0]
    assert -total == pytest.approx(cost, rel=1e-9)
    # The same number from its parts: the steps taken, the failing state's terminal cost and
    # the penalty; nothing for the steps never taken.
    stages = sum(problem.stage_cost(states[j:j + 1], target[None], plan[j:j + 1])[0]
                 for j in range(k))
    terminal = problem.terminal_cost(states[k:k + 1], target[None])[0]
    assert cost == pytest.approx(stages + terminal + penalty, rel=1e-9)
    assert problem.constraint_violations(states[None])[0]
    assert not problem.success(states[None], target[None])[0]
    np.testing.assert_array_equal(problem.alive_mask(states[None])[0],
                                  np.arange(problem.horizon) < k)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(plan[k].astype(np.float32))
    return k


def test_collision_ends_the_episode_with_the_penalty():
    problem = make_problem(NAV)
    x0 = np.array([-4.0, 1.2, 0.0, 0.0])  # level with obstacle 0, accelerating straight at it
    plan = np.tile([2.0, 0.0], (problem.horizon, 1))
    k = check_failed_episode(NAV, x0, GOAL, plan,
                             problem.failure_penalty)
    assert k == 13  # 1.5 m at 2 m/s^2: inside after 1.3 s
    assert problem.failure_penalty == 1000.0


def test_rocket_crash_ends_the_episode_with_the_penalty():
    problem = make_problem(ROCKET)
    x0 = np.array([10.0, -5.0, 400.0, 0.0, 0.0, -45.0, 1.9])
    plan = np.zeros((problem.horizon, 3))  # engine off: free fall
    k = check_failed_episode(ROCKET, x0, np.zeros(7), plan, problem.failure_penalty)
    assert k == 7  # 400 m at 45 m/s plus 3.71 m/s^2: below the ground after 6.9 s
    env = gym.make(ROCKET)
    env.reset(options={"state": x0})
    for j in range(k):
        *_, terminated, _, info = env.step(plan[j].astype(np.float32))
    # Engine off burns only the smoothed norm's sqrt(1e-6) kN: 0.5 g per second.
    assert terminated and info["fuel_used"] == pytest.approx(k * 1e-3 / EXHAUST * 1000.0)


def test_rocket_success_conditions():
    problem = make_problem(ROCKET)
    target = np.zeros((1, 7))
    base = np.zeros((1, problem.horizon + 1, 7))
    base[..., 2] = np.linspace(500.0, 0.0, problem.horizon + 1)
    base[..., 6] = 1.9

    def with_final(**changes):
        states = base.copy()
        for index, value in changes.items():
            states[0, -1, int(index[1:])] = value
        return states

    assert problem.success(base, target)[0]
    assert problem.success(with_final(i0=3.0, i1=-3.0, i5=-1.9), target)[0]
    assert not problem.success(with_final(i2=1.5), target)[0]  # still 1.5 m up
    assert not problem.success(with_final(i0=4.0, i1=3.1), target)[0]  # 5.04 m off the pad
    assert not problem.success(with_final(i3=1.5, i5=-1.5), target)[0]  # 2.1 m/s
    dipped = base.copy()
    dipped[0, 20, 2] = -0.1
    assert problem.constraint_violations(dipped)[0] and not problem.success(dipped, target)[0]
    assert not problem.constraint_violations(with_final(i2=-0.5))[0]  # the end may touch 0-


# ------------------------------------------------------------------ expert optimality
def objective(env_id, x0, target, U):
    """What iLQR minimises last: J plus the expert's final barrier stage, ``[B]``."""
    from trc_gym.experts.ilqr import objective_torch

    expert = trc_gym.make_expert(env_id)
    problem, penalty = expert.problem, expert.barrier(-1)
    with torch.no_grad():
        x0, target, U = (torch.as_tensor(a) for a in (x0, target, U))
        states = problem.rollout_torch(x0, U, terminate=False)
        return objective_torch(problem, states, target, U, penalty).numpy()


@pytest.mark.parametrize("env_id", HARD)
def test_expert_beats_random_feasible_perturbations(env_id, expert_cache):
    problem = make_problem(env_id)
    x0, target, U = expert_cache(env_id)
    best = objective(env_id, x0, target, U)
    rng = np.random.default_rng(4)
    span = problem.u_high - problem.u_low
    for scale in (0.003, 0.03):
        for _ in range(10):
            other = np.clip(U + scale * span * rng.standard_normal(U.shape), problem.u_low,
                            problem.u_high)
            feasible = ~problem.constraint_violations(problem.rollout(x0, other))
            worse = objective(env_id, x0, target, other) >= best * (1.0 - 1e-9)
            assert np.all(worse | ~feasible), f"{env_id}: a perturbation beat the expert"


def test_an_expert_with_a_margin_keeps_clear_of_the_obstacles_at_a_small_cost(expert_cache):
    env_id = "TRC-ObstacleNav-v0"
    problem = make_problem(env_id)
    x0, target, optimal = expert_cache(env_id)
    safe = trc_gym.make_expert(env_id).with_margin(0.1).plan(x0, target)
    clearance = {name: problem.constraint_margins_torch(torch.as_tensor(
        problem.rollout(x0, U)[:, 1:])).amin((1, 2)).numpy()
        for name, U in (("optimal", optimal), ("safe", safe))}
    assert clearance["optimal"].min() < 0.02  # the optimal plans graze an obstacle
    assert clearance["safe"].min() > 0.095
    assert problem.success(problem.rollout(x0, safe), target).all()
    cost, safe_cost = problem.cost(x0, target, optimal), problem.cost(x0, target, safe)
    assert np.all(safe_cost >= cost * (1 - 1e-6)) and safe_cost.mean() < 1.03 * cost.mean()


def test_a_margin_needs_hard_state_constraints():
    with pytest.raises(ValueError, match="margin must be 0"):
        trc_gym.make_expert("TRC-Pendulum-v0").with_margin(0.1)
    with pytest.raises(ValueError, match="margin"):
        trc_gym.make_expert("TRC-ObstacleNav-v0").with_margin(-0.1)
    trc_gym.make_expert("TRC-Pendulum-v0").with_margin(0.0)  # no margin is always allowed
    with pytest.raises(ValueError, match="margin"):
        datasets.DataConfig(margin=-0.1)
    with pytest.raises(ValueError, match="margin must be 0"):
        datasets.generate("TRC-Pendulum-v0", 2, margin=0.1, progress=False)


def test_generated_data_records_its_margin_and_keeps_it():
    data = datasets.generate("TRC-ObstacleNav-v0", 2, workers=1, margin=0.1, progress=False)
    assert data.metadata["margin"] == 0.1
    problem = make_problem("TRC-ObstacleNav-v0")
    assert problem.constraint_margins_torch(torch.as_tensor(data.states[:, 1:])).min() > 0.095


@pytest.mark.parametrize("env_id", HARD)
def test_expert_plan_shapes_and_bounds(env_id, expert_cache):
    problem = make_problem(env_id)
    x0, _, U = expert_cache(env_id)
    assert U.shape == (len(x0), problem.horizon, problem.n_control)
    assert np.all(U >= problem.u_low - 1e-12) and np.all(U <= problem.u_high + 1e-12)


# ------------------------------------------------------------------ base-env extensions
def test_obstacles_are_in_the_observation():
    env = gym.make(NAV)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (24,) and obs.shape == (24,)
    np.testing.assert_allclose(obs[9:], OBSTACLES.reshape(-1).astype(np.float32))
    obs, *_ = env.step(np.zeros(2, dtype=np.float32))
    np.testing.assert_allclose(obs[9:], OBSTACLES.reshape(-1).astype(np.float32))
    assert obs[8] == pytest.approx(1.0 - 1.0 / 50)
    assert gym.make(QUAD).observation_space.shape == (13,)  # no extras elsewhere


class ConstantPolicy(PlanningPolicy):
    """The same control at every step (collides on ObstacleNav from most starts)."""

    def __init__(self, env_id, control):
        super().__init__(make_problem(env_id), env_id)
        self.control = np.asarray(control, dtype=np.float64)

    def plan(self, x0, target):
        return np.tile(self.control, (len(x0), self.problem.horizon, 1))


def test_planning_policy_predict_reads_observations_with_extras():
    policy = ConstantPolicy(NAV, [1.0, -0.5])
    env = gym.make(NAV)
    obs, _ = env.reset(seed=1)
    action, _ = policy.predict(obs)
    np.testing.assert_allclose(action, [1.0, -0.5])
    actions, _ = policy.predict(np.stack([obs, obs]))
    assert actions.shape == (2, 2)
    with pytest.raises(ValueError, match="observation has shape"):
        policy.predict(obs[:9])


def test_stepped_evaluation_pads_failed_episodes_like_the_batched_rollout():
    problem = make_problem(NAV)
    policy = ConstantPolicy(NAV, [2.0, 0.0])
    x0, target = trc_gym.held_out_starts(NAV, 6)
    episodes, _ = evaluation.step_episodes(policy, NAV, x0, target)
    controls, states, costs = episodes.controls, episodes.states, episodes.costs
    plan = policy.plan(x0, target)
    failed = problem.constraint_violations(states)
    assert failed.any()  # some episodes ended early and were padded
    np.testing.assert_allclose(states, problem.rollout(x0, plan), rtol=1e-12)
    np.testing.assert_allclose(costs, problem.cost(x0, target, plan), rtol=1e-9)
    stepped = evaluation.trajectory_metrics(problem, target, episodes)
    batched = evaluation.trajectory_metrics(problem, target,
                                            evaluation.run_plans(policy, problem, x0, target))
    for key in ("mean_cost", "effort", "success_rate", "violations", "terminal_error"):
        assert stepped[key] == pytest.approx(batched[key], rel=1e-9), key
    assert stepped["violations"] == pytest.approx(failed.mean())
    for batch in (1, 4):  # lockstep groups of any size step the same episodes
        grouped = evaluation.step_episodes(policy, NAV, x0, target, batch=batch)[0]
        for a, b in zip((grouped.controls, grouped.states, grouped.costs),
                        (controls, states, costs), strict=True):
            np.testing.assert_array_equal(a, b)


def test_problems_without_failures_are_unchanged():
    problem = make_problem("TRC-DoubleIntegrator-v0")
    x0 = np.array([[1.0, 0.0]])
    U = np.full((1, problem.horizon, 1), 4.0)
    states = problem.rollout(x0, U)
    assert problem.alive_mask(states).all() and not problem.failed(states[:, -1], 15).any()
    with torch.no_grad():
        assert problem.failed_by_torch(torch.as_tensor(states)) is None


# ------------------------------------------------------------------ datasets
@pytest.mark.parametrize("env_id", [QUAD, ROCKET, pytest.param(NAV, marks=pytest.mark.slow)])
def test_trc_generate_writes_expert_datasets(env_id, tmp_path, capsys):
    out = tmp_path / "demo.npz"
    assert trc_main(["generate", "--env", env_id, "--num-samples", "2", "--workers", "1",
                     "--out", str(out)]) == 0
    data = datasets.load(out, env_id)
    problem = make_problem(env_id)
    assert data.controls.shape == (2, problem.horizon, problem.n_control)
    np.testing.assert_allclose(data.costs, problem.cost(data.initial_states, data.target_states,
                                                        data.controls))
    assert problem.success(data.states, data.target_states).all()
    assert "wrote 2 expert plans" in capsys.readouterr().out
