"""DAgger: the labels are the expert's plans from states the planner's own MPC episodes reach."""

import copy

import numpy as np
import pytest
import torch

import trc_gym
from baselines import ExpertPolicy
from policies import BCConfig, DAggerConfig, TRCPolicy, dagger, train_bc
from policies.dagger import visited_states
from trc_gym import datasets
from trc_gym.evaluation import run_episodes

DI = "TRC-DoubleIntegrator-v0"


def test_visited_states_are_live_steps_after_the_start_half_from_failed_episodes():
    alive = np.ones((6, 10), dtype=bool)
    alive[4, 3:] = False  # episode 4 failed at step 3: no state after it is drawn
    failed = np.array([False, False, False, False, True, True])
    rows, steps = visited_states(alive, failed, 400, 0.5, np.random.default_rng(0))
    assert len(rows) == len(steps) == 400
    assert steps.min() >= 1 and alive[rows, steps].all()
    assert failed[rows[:200]].all() and set(rows[:200]) == {4, 5}  # the failed share...
    assert set(rows[200:]) == set(range(6))  # ...and the rest from every episode
    assert set(steps[rows == 4]) == {1, 2}
    rows, steps = visited_states(alive, np.zeros(6, dtype=bool), 50, 0.5,
                                 np.random.default_rng(0))
    assert len(rows) == 50 and alive[rows, steps].all()  # no failures: all from every episode


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"DAggerConfig\.rounds"):
        DAggerConfig(rounds=-1)
    with pytest.raises(ValueError, match=r"DAggerConfig\.failed_share"):
        DAggerConfig(failed_share=1.5)


def _round(policy, data, seed=0):
    config = DAggerConfig(rounds=1, episodes=16, labels=24, epochs=2, workers=1)
    bc = BCConfig(epochs=1, batch_size=32, patience=5, validation="mpc")
    return dagger(policy, data, config, bc, seed=seed, progress=False)


def test_a_round_adds_the_experts_plans_from_states_its_mpc_episodes_reach():
    data = datasets.generate(DI, 64, seed=0, progress=False)
    torch.manual_seed(0)
    policy = TRCPolicy.create(DI, latent_dim=32, hidden_dim=64, n_refine=2)
    train_bc(policy, data, BCConfig(epochs=3, batch_size=32), progress=False)
    before = copy.deepcopy(policy)
    twin = copy.deepcopy(policy)

    grown, records = _round(policy, data)
    assert len(grown) == 64 + 24 and records[0]["labels"] == 24
    labels = grown.subset(np.arange(64, 88))
    np.testing.assert_array_equal(grown.controls[:64], data.controls)
    # Each label is the exact optimum from its state...
    np.testing.assert_allclose(labels.controls,
                               ExpertPolicy(DI).plan(labels.initial_states, labels.target_states),
                               atol=1e-9)
    # ...and that state is one the cloned planner's MPC episodes reached (not a start).
    problem = trc_gym.make_problem(DI)
    rng = np.random.default_rng([0, 0])
    x0, target = problem.sample_initial_states(rng, 16), problem.sample_targets(rng, 16)
    replanning = TRCPolicy(before.model, DI, receding_horizon=True)
    reached = run_episodes(replanning, DI, x0, target).states[:, 1:-1].reshape(-1, 2)
    distance = np.abs(labels.initial_states[:, None] - reached[None]).max(-1).min(1)
    assert distance.max() < 1e-9  # up to the rollout's float rounding
    assert policy.metadata["dagger"][0]["episodes"] == 16
    assert any(not torch.equal(a, b) for a, b in zip(policy.model.state_dict().values(),
                                                     before.model.state_dict().values()))
    # The same seed gives the same labels and weights.
    again, _ = _round(twin, data)
    np.testing.assert_array_equal(again.initial_states, grown.initial_states)
    for a, b in zip(twin.model.state_dict().values(), policy.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
