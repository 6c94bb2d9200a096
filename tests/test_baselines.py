"""SB3 baselines: training on every env, the agent's face in the shared evaluation, save/load,
observation normalisation saved with the model and frozen at evaluation, the package-name
env ids that outside tooling uses, and (slow) the tuned PPO within 1% of the optimum."""

import json
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import trc_gym
from baselines import load_agent, train_agent
from baselines.agent import ObservationNormalizer
from baselines.hyperparameters import TUNED, hyperparameters
from baselines.training import make_training_env, training_wrappers
from trc_gym.evaluation import feedback_path
from trc_gym.files import read_csv_rows


def evaluate_batched(agent, env_id, n_episodes):
    """What model selection uses: the feedback loop batched through the problem (stepped on
    the envs that override ControlEnv's step)."""
    path = feedback_path(env_id)
    return trc_gym.evaluate(agent, env_id, n_episodes, path=path, latency_samples=0)

IDS = list(trc_gym.ENV_IDS)
DI = "TRC-DoubleIntegrator-v0"
# A few hundred steps with small batches: enough to exercise every code path.
TINY = {"ppo": {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2},
        "sac": {"learning_starts": 100, "batch_size": 32, "buffer_size": 1000}}


def tiny(algo, env_id=DI, timesteps=256, **kwargs):
    options = {"progress_bar": False, "n_validation": 4, "n_curve": 0, "eval_freq": 128,
               **TINY[algo], **kwargs}
    return train_agent(algo, env_id, timesteps, **options)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    return tiny("ppo", out_dir=out, n_curve=3), out


@pytest.mark.parametrize("algo", ["ppo", "sac"])
@pytest.mark.parametrize("env_id", IDS)
def test_train_briefly_and_evaluate_on_every_env(env_id, algo):
    agent = tiny(algo, env_id, eval_freq=0)
    assert agent.info["env_steps"] >= 256
    assert agent.info["train_seconds"] > 0
    stepped = trc_gym.evaluate(agent, env_id, n_episodes=3)  # gym.make + predict
    assert np.isfinite(stepped["mean_cost"]) and np.isfinite(stepped["gap"])
    obs = np.random.default_rng(0).normal(0, 3, (64, agent.obs_dim)).astype(np.float32)
    actions = agent.predict(obs)[0]  # physical units, inside the bound
    assert np.all(actions >= agent.action_low - 1e-6)
    assert np.all(actions <= agent.action_high + 1e-6)
    batched = evaluate_batched(agent, env_id, n_episodes=3)  # the fast path used in training
    for key in ("mean_cost", "terminal_error", "effort", "success_rate", "violations", "gap"):
        assert batched[key] == pytest.approx(stepped[key], rel=1e-6, abs=1e-9), key


def test_run_directory_holds_best_final_and_curve(ppo_run):
    agent, out = ppo_run
    for name in ("best", "final"):
        assert (out / name / "model.zip").exists() and (out / name / "agent.json").exists()
    curve = read_csv_rows(out / "curve.csv")
    assert [row["env_steps"] for row in curve] == [128, 256]
    assert {"val_gap", "test_gap", "test_success"} <= set(curve[0])
    best = min(curve, key=lambda row: row["val_mean_cost"])
    assert agent.info["selected_at_env_steps"] == best["env_steps"]
    assert agent.info["validation_env_steps"] == 2 * 4 * 15  # 2 evaluations x 4 starts x N
    record = json.loads((out / "training.json").read_text())
    assert record["env_steps"] == 256 and record["hyperparameters"]["n_steps"] == 64


def test_save_load_round_trip_gives_identical_actions(ppo_run, tmp_path):
    agent, out = ppo_run
    obs = np.random.default_rng(0).uniform(-2, 2, (64, 5)).astype(np.float32)
    obs[:, 4] = np.linspace(0, 1, 64)
    for loaded in (load_agent(out), load_agent(out / "best"), load_agent(agent.save(tmp_path))):
        np.testing.assert_array_equal(loaded.predict(obs)[0], agent.predict(obs)[0])
        np.testing.assert_array_equal(loaded.normalizer.mean, agent.normalizer.mean)
        assert loaded.n_parameters == agent.n_parameters
    sac = tiny("sac", eval_freq=0)
    np.testing.assert_array_equal(load_agent(sac.save(tmp_path / "sac")).predict(obs)[0],
                                  sac.predict(obs)[0])


def test_observation_statistics_are_saved_and_frozen_at_evaluation(tmp_path):
    agent = tiny("ppo", eval_freq=0)  # the final model: its stats are the training env's
    vec_normalize = agent.model.get_vec_normalize_env()
    assert vec_normalize is not None and vec_normalize.norm_obs
    np.testing.assert_array_equal(agent.normalizer.mean, vec_normalize.obs_rms.mean)
    np.testing.assert_array_equal(agent.normalizer.var, vec_normalize.obs_rms.var)
    assert not np.allclose(agent.normalizer.var[:2], 1.0)  # non-trivial statistics

    obs = np.random.default_rng(1).uniform(-2, 2, (32, 5)).astype(np.float32)
    unit, _ = agent.model.predict(vec_normalize.normalize_obs(obs), deterministic=True)
    expected = agent.action_low + (np.clip(unit, -1, 1) + 1) / 2 * (
        agent.action_high - agent.action_low)
    np.testing.assert_allclose(agent.predict(obs)[0], expected, rtol=0, atol=1e-6)
    raw = agent.model.predict(obs, deterministic=True)[0]  # skipping normalisation differs
    assert not np.allclose(raw, unit)

    before = (vec_normalize.obs_rms.mean.copy(), vec_normalize.obs_rms.count)
    trc_gym.evaluate(agent, DI, n_episodes=5)
    evaluate_batched(agent, DI, n_episodes=5)
    np.testing.assert_array_equal(vec_normalize.obs_rms.mean, before[0])
    assert vec_normalize.obs_rms.count == before[1]

    loaded = load_agent(agent.save(tmp_path / "agent"))
    saved = json.loads((tmp_path / "agent" / "agent.json").read_text())["normalizer"]
    assert saved["enabled"] and np.allclose(saved["mean"], agent.normalizer.mean)
    np.testing.assert_array_equal(loaded.predict(obs)[0], agent.predict(obs)[0])
    trc_gym.evaluate(loaded, DI, n_episodes=5)
    np.testing.assert_array_equal(loaded.normalizer.mean, agent.normalizer.mean)


def test_no_normalisation_is_the_identity():
    agent = tiny("ppo", eval_freq=0, normalize={"norm_obs": False, "norm_reward": False})
    assert agent.normalizer == ObservationNormalizer() or agent.normalizer.mean is None
    obs = np.ones((3, 5), np.float32)
    np.testing.assert_array_equal(agent.normalizer(obs), obs)


def test_same_seed_same_agent():
    obs = np.random.default_rng(2).uniform(-2, 2, (16, 5)).astype(np.float32)
    a, b = tiny("ppo", seed=3), tiny("ppo", seed=3)
    np.testing.assert_array_equal(a.predict(obs)[0], b.predict(obs)[0])
    c = tiny("ppo", seed=4)
    assert not np.array_equal(a.predict(obs)[0], c.predict(obs)[0])


@pytest.mark.parametrize("env_id", IDS)
def test_training_env_passes_sb3_check_env_with_unit_actions(env_id):
    from stable_baselines3.common.env_checker import check_env

    env = training_wrappers(gym.make(env_id))
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True)
    assert not [w for w in caught if "symmetric" in str(w.message)]
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(env.action_space.shape, np.float32))
    problem = env.unwrapped.problem  # +1 is the upper physical bound
    x0 = env.unwrapped.trajectory[0][None]
    np.testing.assert_allclose(info["state"], problem.step(x0, problem.u_high[None])[0])


def test_package_prefixed_ids_work_in_a_fresh_process_and_subproc_vec_env():
    code = ("import gymnasium as gym, sys\n"
            f"for env_id in {IDS!r}:\n"
            "    env = gym.make('trc_gym:' + env_id)\n"
            "    env.reset(seed=0); env.step(env.action_space.sample())\n"
            "assert 'trc_gym' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

    venv = make_training_env(DI, n_envs=2, seed=0, vec_env="subproc",
                             normalize={"norm_obs": True})
    try:
        obs = venv.reset()
        assert obs.shape == (2, 5)
        obs, reward, _, _ = venv.step(np.zeros((2, 1), np.float32))
        assert obs.shape == (2, 5) and reward.shape == (2,)
    finally:
        venv.close()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown env id"):
        train_agent("ppo", "TRC-Nope-v0", 64, progress_bar=False)
    with pytest.raises(ValueError, match="unknown algorithm"):
        train_agent("a2c", DI, 64, progress_bar=False)
    with pytest.raises(ValueError, match="learning_rte"):
        train_agent("ppo", DI, 64, progress_bar=False, learning_rte=1e-3)
    with pytest.raises(ValueError, match="n_envs"):
        make_training_env(DI, n_envs=0)
    with pytest.raises(FileNotFoundError, match="no SB3 agent"):
        load_agent("/nonexistent/agent")


def test_bad_observation_is_named(ppo_run):
    agent, _ = ppo_run
    with pytest.raises(ValueError, match="observation has shape"):
        agent.predict(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        agent.predict(np.full(5, np.nan, np.float32))


def test_hyperparameter_table_merges_layers():
    params = hyperparameters(DI, "ppo", policy_kwargs={"net_arch": [8]}, gamma=0.5)
    assert params["policy_kwargs"]["net_arch"] == [8]
    assert "activation_fn" in params["policy_kwargs"]  # merged, not replaced
    assert params["gamma"] == 0.5
    assert params["n_timesteps"] == TUNED[DI]["ppo"].get("n_timesteps", params["n_timesteps"])
    assert hyperparameters(f"trc_gym:{DI}", "PPO") == hyperparameters(DI, "ppo")


def test_cli_train_baseline(tmp_path, capsys):
    from trc_gym.cli import main

    overrides = json.dumps({"n_steps": 64, "batch_size": 64, "n_epochs": 1})
    code = main(["train-baseline", "--algo", "ppo", "--env", DI, "--timesteps", "128",
                 "--n-envs", "2", "--eval-freq", "128", "--episodes", "3", "--no-progress",
                 "--set", overrides, "--out", str(tmp_path / "run")])
    assert code == 0
    assert (tmp_path / "run" / "best" / "agent.json").exists()
    assert "gap to expert" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run"), "--env", DI, "--episodes", "2"]) == 0


@pytest.mark.slow
def test_tuned_ppo_is_within_one_percent_of_the_optimum_on_the_double_integrator(tmp_path):
    agent = train_agent("ppo", DI, progress_bar=False, out_dir=tmp_path, n_curve=0)
    metrics = trc_gym.evaluate(agent, DI, n_episodes=500)
    assert metrics["gap"] < 0.01, metrics
    assert metrics["success_rate"] > 0.99


@pytest.mark.slow
def test_compare_script_smoke_run(tmp_path):
    """examples/compare.py end to end with tiny budgets, then a rerun that only evaluates."""
    command = [sys.executable, "examples/compare.py", "--envs", DI, "--quick", "--no-trc",
               "--episodes", "20", "--no-progress", "--cache", str(tmp_path / "cache"),
               "--out", str(tmp_path / "out")]
    subprocess.run(command, check=True, timeout=600)
    table = (tmp_path / "out" / "compare.md").read_text()
    for method in ("expert", "PPO", "SAC", "random", "zero"):
        assert f"| {method} |" in table
    assert "TRC rows omitted (--no-trc)" in table
    assert (tmp_path / "out" / "DoubleIntegrator_curves.png").exists()
    record = json.loads((tmp_path / "out" / "DoubleIntegrator.json").read_text())
    before = (tmp_path / "cache" / DI / "ppo" / "best" / "model.zip").stat().st_mtime
    subprocess.run(command, check=True, timeout=600)  # cached: evaluates only
    assert (tmp_path / "cache" / DI / "ppo" / "best" / "model.zip").stat().st_mtime == before
    again = json.loads((tmp_path / "out" / "DoubleIntegrator.json").read_text())
    assert again["results"]["PPO"]["mean_cost"] == record["results"]["PPO"]["mean_cost"]


@pytest.mark.parametrize("env_id", ["TRC-Quadrotor2D-v0", "TRC-Rocket-v0"])
def test_the_agent_maps_actions_exactly_as_its_training_env_did(env_id):
    """SB3 acts on [-1, 1]^m; the agent's map back to physical units is the training wrapper's
    own, bit for bit (bounds that are not symmetric powers of two round in float32)."""
    from baselines.agent import unit_action_map

    env = training_wrappers(gym.make(env_id))
    problem = env.unwrapped.problem
    unit = np.random.default_rng(0).uniform(-1, 1, (200, problem.n_control)).astype(np.float32)
    to_physical = unit_action_map(problem.u_low, problem.u_high)
    np.testing.assert_array_equal(np.stack([env.action(a) for a in unit]), to_physical(unit))
