"""Datasets round-trip and validate; the evaluation harness measures what it claims."""

import json
import time

import numpy as np
import pytest
import torch

import trc_gym
from baselines import ExpertPolicy, RandomPolicy, ZeroPolicy
from trc_gym import datasets
from trc_gym.cli import main as trc_main
from trc_gym.evaluation import plan_latencies_ms

DI = "TRC-DoubleIntegrator-v0"


def test_dataset_round_trip(tmp_path):
    data = datasets.generate(DI, 50, seed=7, progress=False)
    path = datasets.save(data, tmp_path / "sub" / "di.npz")
    loaded = datasets.load(path, env_id=DI)
    for key in datasets.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(data, key))
    assert loaded.metadata["env_id"] == DI and loaded.metadata["seed"] == 7
    assert loaded.metadata["version"] == trc_gym.__version__
    problem = trc_gym.make_problem(DI)
    np.testing.assert_allclose(problem.cost(loaded.initial_states, loaded.target_states,
                                            loaded.controls), loaded.costs)
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["di.npz"]  # no temp left


def test_dataset_is_deterministic_per_seed():
    a = datasets.generate(DI, 20, seed=1, progress=False)
    b = datasets.generate(DI, 20, seed=1, progress=False)
    c = datasets.generate(DI, 20, seed=2, progress=False)
    np.testing.assert_array_equal(a.controls, b.controls)
    assert not np.array_equal(a.initial_states, c.initial_states)


def test_dataset_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        datasets.load(bad)
    data = datasets.generate(DI, 10, progress=False)
    path = datasets.save(data, tmp_path / "di.npz")
    with pytest.raises(ValueError, match="holds 'TRC-DoubleIntegrator-v0' data"):
        datasets.load(path, env_id="TRC-Other-v0")
    arrays = dict(np.load(path))
    arrays["controls"] = arrays["controls"][:, :3]
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ValueError, match="controls has shape"):
        datasets.load(tmp_path / "shape.npz")
    arrays = dict(np.load(path))
    arrays["metadata"] = np.array("{not json")
    np.savez(tmp_path / "meta.npz", **arrays)
    with pytest.raises(ValueError, match="corrupt metadata"):
        datasets.load(tmp_path / "meta.npz")


def test_split_is_disjoint_and_complete():
    data = datasets.generate(DI, 100, progress=False)
    train, val = data.split(0.9, seed=0)
    assert len(train) == 90 and len(val) == 10
    both = np.concatenate([train.initial_states, val.initial_states])
    assert len(np.unique(both, axis=0)) == 100


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "d.npz"
    assert trc_main(["generate", "--env", DI, "--num-samples", "16", "--out", str(out)]) == 0
    assert len(datasets.load(out)) == 16
    assert "expert plans" in capsys.readouterr().err  # the progress bar...
    assert trc_main(["generate", "--env", DI, "--num-samples", "16", "--out", str(out),
                     "--no-progress"]) == 0
    assert "expert plans" not in capsys.readouterr().err  # ...and without it
    assert trc_main(["generate", "--env", "TRC-Nope-v0", "--num-samples", "4",
                     "--out", str(out)]) == 2
    assert "unknown env id" in capsys.readouterr().err


def test_evaluate_expert_is_optimal_and_stepped_path_agrees():
    batched = trc_gym.evaluate(ExpertPolicy(DI), DI, n_episodes=40)
    stepped = trc_gym.evaluate(ExpertPolicy(DI), DI, n_episodes=40, path="step")
    assert batched["gap"] == pytest.approx(0.0, abs=1e-12)
    assert batched["success_rate"] == 1.0 and batched["violations"] == 0.0
    for key in ("mean_cost", "terminal_error", "effort", "success_rate",
                "terminal_error_position", "terminal_error_velocity"):
        assert stepped[key] == pytest.approx(batched[key], rel=1e-5, abs=1e-7)


def test_receding_horizon_policy_is_stepped_and_cannot_beat_the_open_loop_optimum():
    from trc_gym.evaluation import acts_by_plan, step_episodes

    mpc = ExpertPolicy(DI, receding_horizon=True)
    assert acts_by_plan(ExpertPolicy(DI)) and not acts_by_plan(mpc)
    x0, target = trc_gym.held_out_starts(DI, 30)
    episodes, _ = step_episodes(mpc, DI, x0, target)
    controls, states, costs = episodes.controls, episodes.states, episodes.costs
    optimal = ExpertPolicy(DI).plan(x0, target)
    # The same first move (up to float32: observations and actions are float32).
    np.testing.assert_allclose(controls[:, 0], optimal[:, 0], rtol=1e-5, atol=1e-6)
    problem = trc_gym.make_problem(DI)
    np.testing.assert_allclose(costs, problem.cost(x0, target, controls), rtol=1e-9)
    # Deterministic dynamics: replanning can only match or lose to the exact open-loop optimum.
    assert np.all(costs >= problem.cost(x0, target, optimal) * (1.0 - 1e-6))
    assert problem.success(states, target).all()
    metrics = trc_gym.evaluate(mpc, DI, n_episodes=30, latency_samples=2)  # stepped by default
    assert metrics["mean_cost"] == pytest.approx(costs.mean(), rel=1e-12)


def test_evaluate_orders_baselines():
    expert = trc_gym.evaluate(ExpertPolicy(DI), DI, n_episodes=100)
    zero = trc_gym.evaluate(ZeroPolicy(DI), DI, n_episodes=100)
    rand = trc_gym.evaluate(RandomPolicy(DI), DI, n_episodes=100)
    assert expert["mean_cost"] < zero["mean_cost"] < rand["mean_cost"]
    assert zero["effort"] == 0.0 and zero["gap"] > 10
    table = trc_gym.format_table({"expert": expert, "zero": zero})
    assert "| expert |" in table and "+0.000%" in table
    json.dumps(expert)  # plain floats: results can be written as JSON


def test_evaluate_counts_out_of_bound_controls():
    class Overdrive(ZeroPolicy):
        def plan(self, x0, target):
            return np.full((len(x0), 15, 1), 10.0)

    metrics = trc_gym.evaluate(Overdrive(DI), DI, n_episodes=5)
    assert metrics["violations"] == 1.0


def test_predict_executes_plan_open_loop():
    policy = ExpertPolicy(DI)
    x0, target = trc_gym.held_out_starts(DI, 3)
    plans = policy.plan(x0, target)
    obs = np.c_[x0, target, np.ones(3)].astype(np.float32)
    actions, state = policy.predict(obs)
    assert state is None
    np.testing.assert_allclose(actions, plans[:, 0], rtol=1e-6)
    single, _ = policy.predict(obs[0])
    assert single.shape == (1,)
    with pytest.raises(ValueError, match="observation has shape"):
        policy.predict(np.zeros((2, 4)))


def test_interleaved_latencies_time_every_start_of_each_policy_at_batch_one():
    class Recorder(ZeroPolicy):
        def __init__(self, log, name):
            super().__init__(DI)
            self.log, self.name = log, name

        def plan(self, x0, target):
            self.log.append((self.name, len(x0), torch.get_num_threads()))
            return super().plan(x0, target)

    log = []
    x0, target = trc_gym.held_out_starts(DI, 25)
    threads = torch.get_num_threads()
    times = plan_latencies_ms({"a": Recorder(log, "a"), "b": Recorder(log, "b")}, x0, target,
                              block=10)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    assert torch.get_num_threads() == threads  # restored
    assert all(size == 1 and n_threads == 1 for _, size, n_threads in log)
    # One warm-up each, then blocks in turn: a x10, b x10, a x10, b x10, a x5, b x5.
    names = "".join(name for name, _, _ in log)
    assert names == "ab" + "a" * 10 + "b" * 10 + "a" * 10 + "b" * 10 + "a" * 5 + "b" * 5


def test_latency_timing_stops_once_it_has_taken_its_seconds():
    class Slow(ZeroPolicy):
        def __init__(self, receding_horizon=False):
            super().__init__(DI)
            self.receding_horizon, self.batch1_plans = receding_horizon, 0

        def plan(self, x0, target):
            self.batch1_plans += len(x0) == 1
            time.sleep(0.01 if len(x0) == 1 else 0.0)
            return super().plan(x0, target)

    planner = Slow()
    metrics = trc_gym.evaluate(planner, DI, 30, latency_seconds=0.05)
    assert metrics["ms_per_plan"] >= 10.0
    assert planner.batch1_plans == 1 + 10  # the warm-up, then the one block that passed 0.05 s
    assert trc_gym.evaluate(Slow(), DI, 30, latency_seconds=1.0)["ms_per_plan"] >= 10.0
    stepped = Slow(receding_horizon=True)  # replans at every one of DI's 15 steps
    metrics = trc_gym.evaluate(stepped, DI, 30, latency_samples=5, latency_seconds=0.0)
    assert stepped.batch1_plans == 15  # one episode at least, then the budget is spent
    assert metrics["ms_per_action"] >= 10.0
    with pytest.raises(ValueError, match="latency_seconds"):
        trc_gym.evaluate(planner, DI, 30, latency_seconds=-1.0)


def test_trajectory_starts_lie_on_the_expert_trajectories_of_the_box_samples():
    data = datasets.generate(DI, 40, seed=3, trajectory_starts=0.25, progress=False)
    box = datasets.generate(DI, 30, seed=3, progress=False)
    np.testing.assert_array_equal(data.initial_states[:30], box.initial_states)
    for x0, target in zip(data.initial_states[30:], data.target_states[30:]):
        # a state some box sample's expert trajectory passes through, with that sample's target
        on = np.abs(box.states[:, 1:-1] - x0).max(axis=2).min(axis=1) < 1e-12
        assert (box.target_states[on] == target).all(axis=1).any()
    assert data.metadata["trajectory_starts"] == 0.25
    with pytest.raises(ValueError, match="trajectory_starts"):
        datasets.generate(DI, 10, trajectory_starts=1.0, progress=False)


def test_the_gap_distribution_script_reports_the_evaluations_gap_and_who_carries_it(
        tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "examples"))
    from gap_distribution import excess_by, gap_distribution

    from policies import TRCPolicy

    expert = np.ones(100)
    costs = np.full(100, 1.01)
    costs[37] = 10.0  # one episode carries 9 of the 9.99 excess
    failed = np.zeros(100, dtype=bool)
    failed[[37, 38]] = True
    summary = gap_distribution(costs, expert, failed)
    assert summary["gap"] == pytest.approx(0.0999)
    assert summary["worst_share"][0.01] == pytest.approx(9 / 9.99)
    assert summary["worst_share"][0.10] == pytest.approx((9 + 9 * 0.01) / 9.99)
    assert summary["percentiles"][50] == pytest.approx(0.01) and summary["worst"][0] == 37
    assert summary["failed"] == 2 and summary["failed_share"] == pytest.approx(9.01 / 9.99)
    start = -0.06 * np.arange(100)  # episode 37's |start|, 2.22, is in the third of 6 bins
    rows = excess_by(start, costs, expert)
    assert [r["episodes"] for r in rows] == [17, 16, 17, 16, 17, 17]
    assert rows[2]["low"] <= 2.22 < rows[2]["high"]
    assert rows[2]["share"] == pytest.approx((9 + 0.01 * 16) / 9.99)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)

    torch.manual_seed(0)
    policy = TRCPolicy.create(DI, "small")
    policy.save(tmp_path / "untrained.pt")
    run = subprocess.run([sys.executable, "examples/gap_distribution.py",
                          str(tmp_path / "untrained.pt"), "--episodes", "40", "--by",
                          "velocity"],
                         capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    expected = trc_gym.evaluate(policy, DI, 40, latency_samples=0)["gap"]
    assert f"gap {expected:+.3%}" in run.stdout


def test_the_saturation_split_names_the_starts_whose_optimum_rides_the_bound(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "examples"))
    from bound_saturation import saturation_split

    problem = trc_gym.make_problem(DI)  # controls in [-4, 4]
    expert = np.zeros((4, problem.horizon, 1))
    expert[:2, 0] = 4.0  # the first two optima start at the bound
    policy = expert.copy()
    policy[:2, 0] = 3.0  # the policy stops a quarter short of it
    expert_costs, costs = np.full(4, 10.0), np.array([13.0, 12.0, 10.5, 10.5])
    summary = saturation_split(problem, expert, expert_costs, policy, costs)
    saturating, rest = summary["groups"]["saturating"], summary["groups"]["not saturating"]
    assert saturating["starts"] == rest["starts"] == 2
    assert saturating["gap"] == pytest.approx(0.25) and rest["gap"] == pytest.approx(0.05)
    assert saturating["excess_share"] == pytest.approx(5 / 6)
    assert summary["gap"] == pytest.approx(0.15)
    assert summary["policy_load_where_expert_at_bound"] == pytest.approx(0.75)
    assert summary["expert_controls_at_bound"] == pytest.approx(2 / expert.size)
    assert summary["policy_controls_at_bound"] == 0.0
