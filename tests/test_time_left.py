"""Planning for the time left: the cost of an episode's rest, the tails of the expert's plans,
and a planner that reads the steps left and replans for the episode's fixed end."""

import numpy as np
import pytest
import torch

import trc_gym
from baselines import ZeroPolicy
from policies import BCConfig, TRCPolicy, load_policy, train_bc
from policies.bc import plan_tails
from policies.dagger import DAggerConfig, dagger
from trc_gym import datasets
from trc_gym.evaluation import step_episodes

DI = "TRC-DoubleIntegrator-v0"


@pytest.mark.parametrize("env_id", trc_gym.ENV_IDS)
def test_the_cost_for_the_steps_left_is_the_rest_of_the_episodes_cost(env_id):
    """J(x0, U) = the stages before step k + J(x_k, U[k:], steps_left = N - k), whatever the
    unused controls after the steps left, on every env (Rocket's crash depends on the step)."""
    problem = trc_gym.make_problem(env_id)
    rng = np.random.default_rng(0)
    x0, target = trc_gym.held_out_starts(env_id, 64)
    N, k = problem.horizon, problem.horizon // 3
    plans = rng.uniform(problem.u_low, problem.u_high, (64, N, problem.n_control))
    plans = plans if env_id != "TRC-Rocket-v0" else 0.5 * (plans + problem.u_high)  # fewer crashes
    x0_t, target_t, U = (torch.as_tensor(a) for a in (x0, target, plans))
    states = problem.rollout_torch(x0_t, U)
    terms = problem.cost_terms_torch(states, target_t, U)
    dead = problem.failed_by_torch(states)
    alive = torch.ones(64, N + 1, dtype=torch.bool) if dead is None else ~dead
    before = ((terms["state"] + terms["control"])[:, :k] * alive[:, :k]).sum(1)
    steps_left = torch.full((64,), N - k)
    rests = [torch.cat([U[:, k:], torch.as_tensor(padding)], 1) for padding in
             (np.zeros((64, k, problem.n_control)),
              rng.uniform(problem.u_low, problem.u_high, (64, k, problem.n_control)))]
    rest_costs = [problem.cost_torch(states[:, k], target_t, rest, steps_left) for rest in rests]
    torch.testing.assert_close(rest_costs[0], rest_costs[1], rtol=0, atol=0)  # unused: unread
    full = problem.cost_torch(x0_t, target_t, U)
    ok = alive[:, k]  # where the episode still runs at step k
    assert ok.sum() >= 16
    torch.testing.assert_close((before + rest_costs[0])[ok], full[ok], rtol=1e-10, atol=1e-9)
    # All N steps left: the whole episode's cost.
    torch.testing.assert_close(problem.cost_torch(x0_t, target_t, U, torch.full((64,), N)), full,
                               rtol=1e-12, atol=1e-12)


def test_plan_tails_start_where_the_expert_trajectory_is_after_the_steps_taken():
    data = datasets.generate(DI, 8, seed=1, progress=False)
    problem = trc_gym.make_problem(DI)
    plans = torch.as_tensor(data.controls)
    states = torch.as_tensor(problem.rollout(data.initial_states, data.controls))
    taken = torch.tensor([0, 1, 2, 5, 7, 10, 13, 14])
    reached, rest, steps_left = plan_tails(states, plans, taken)
    N = problem.horizon
    for i, k in enumerate(taken.tolist()):
        torch.testing.assert_close(reached[i], states[i, k])
        torch.testing.assert_close(rest[i, :N - k], plans[i, k:])
        assert steps_left[i] == N - k
    torch.testing.assert_close(rest[0], plans[0])  # nothing taken: the demonstration itself


def test_mpc_replans_for_the_time_left_in_the_episode():
    """A receding-horizon policy that plans for the time left is given the observation's time
    left at every step: 1, (N-1)/N, ..., 1/N."""

    class Recorder(ZeroPolicy):
        plans_time_left = True

        def __init__(self):
            super().__init__(DI)
            self.receding_horizon, self.seen = True, []

        def plan(self, x0, target, time_left=None):
            self.seen.append(np.asarray(time_left))
            return super().plan(x0, target)

    policy = Recorder()
    x0, target = trc_gym.held_out_starts(DI, 3)
    step_episodes(policy, DI, x0, target)
    N = policy.problem.horizon
    np.testing.assert_allclose(np.stack(policy.seen), np.repeat(
        (N - np.arange(N))[:, None] / N, 3, axis=1), rtol=1e-6)


def test_a_time_left_planner_plans_as_its_eager_model_for_every_time_left(tmp_path):
    policy = TRCPolicy.create("TRC-ObstacleNav-v0", "small", n_proposals=2, time_left=True)
    x0, target = trc_gym.held_out_starts("TRC-ObstacleNav-v0", 6)
    time_left = np.array([1.0, 0.9, 0.5, 0.3, 0.1, 0.02])
    steps_left = torch.as_tensor(np.rint(time_left * 50).astype(np.int64))

    def eager(rows):
        with torch.no_grad():
            return policy.model.eval()(*(torch.as_tensor(a[rows], dtype=torch.float32)
                                         for a in (x0, target)),
                                       steps_left=steps_left[rows])["controls"].double().numpy()

    first = policy.plan(x0[:1], target[:1], time_left[:1])  # traced at batch 1, used at 6
    np.testing.assert_array_equal(first, eager(slice(0, 1)))
    np.testing.assert_array_equal(policy.plan(x0, target, time_left), eager(slice(None)))
    # Without a time left: the whole horizon.
    np.testing.assert_array_equal(policy.plan(x0, target), policy.plan(x0, target, np.ones(6)))
    assert not np.array_equal(policy.plan(x0, target)[1:], policy.plan(x0, target,
                                                                      time_left)[1:])
    loaded = load_policy(policy.save(tmp_path / "p.pt"))
    assert loaded.plans_time_left
    np.testing.assert_array_equal(loaded.plan(x0, target, time_left),
                                  policy.plan(x0, target, time_left))


def test_cloning_on_the_tails_teaches_the_plan_for_the_steps_left():
    """Cloned with tails, the planner's plans for the few steps left at the end of held-out
    expert trajectories cost far less than those of the same planner cloned on whole plans
    only, which plans to arrive at the horizon's end as if no step had passed."""
    problem = trc_gym.make_problem(DI)
    data = datasets.generate(DI, 600, seed=2, progress=False)
    test = datasets.generate(DI, 64, seed=3, progress=False)
    N = problem.horizon
    taken = torch.as_tensor(np.random.default_rng(4).integers(N - 5, N, 64))  # 1 to 5 left
    states = torch.as_tensor(problem.rollout(test.initial_states, test.controls))
    reached, rest, steps_left = plan_tails(states, torch.as_tensor(test.controls), taken)
    target = torch.as_tensor(test.target_states)
    optimal = problem.cost_torch(reached, target, rest, steps_left).mean()
    gaps = {}
    for share in (0.0, 0.5):
        torch.manual_seed(0)
        policy = TRCPolicy.create(DI, "small", time_left=True)
        train_bc(policy, data, BCConfig(epochs=15, batch_size=32, tail_share=share),
                 progress=False)
        plans = policy.plan(reached.numpy(), test.target_states, steps_left.numpy() / N)
        cost = problem.cost_torch(reached, target, torch.as_tensor(plans), steps_left).mean()
        gaps[share] = float(cost / optimal - 1)
    assert gaps[0.5] < 0.5 * gaps[0.0], gaps


def test_time_left_input_is_checked():
    plain = TRCPolicy.create(DI, "small")
    timed = TRCPolicy.create(DI, "small", time_left=True)
    x0, target = trc_gym.held_out_starts(DI, 2)
    with pytest.raises(ValueError, match="does not read the time left"):
        plain.plan(x0, target, np.ones(2))
    with pytest.raises(ValueError, match="steps_left given to a planner without time_left"):
        plain.model(torch.zeros(2, 2), torch.zeros(2, 2), steps_left=torch.ones(2))
    for bad in (np.zeros(2), np.full(2, 1.5), np.ones(3)):
        with pytest.raises(ValueError, match="time_left"):
            timed.plan(x0, target, bad)
    with pytest.raises(ValueError, match=r"BCConfig\.tail_share"):
        BCConfig(tail_share=1.5)
    data = datasets.generate(DI, 20, seed=0, progress=False)
    with pytest.raises(ValueError, match="steps left"):
        dagger(timed, data, DAggerConfig(rounds=1), BCConfig(epochs=1), progress=False)
