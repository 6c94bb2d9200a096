"""Every registered env: Gymnasium's and SB3's checkers, seeding, bad input, rendering, and
the invariant that stepping the env and the problem's batched rollout give the same states
and return."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import trc_gym

IDS = list(trc_gym.ENV_IDS)


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_check_env(env_id):
    gym_check_env(gym.make(env_id).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env

    with pytest.warns(UserWarning, match="symmetric and normalized"):  # physical-unit actions
        check_env(gym.make(env_id), warn=True)


@pytest.mark.parametrize("env_id", IDS)
def test_seeding_is_deterministic(env_id):
    a, b = gym.make(env_id), gym.make(env_id)
    obs_a, _ = a.reset(seed=3)
    obs_b, _ = b.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a, a.reset(seed=4)[0])


@pytest.mark.parametrize("env_id", IDS)
def test_env_return_equals_minus_batched_cost(env_id):
    env = gym.make(env_id)
    problem = env.unwrapped.problem
    rng = np.random.default_rng(0)
    x0 = problem.sample_initial_states(rng, 3)
    target = problem.sample_targets(rng, 3)
    # Plans reaching 1.5x beyond the bound: the env clips them exactly as the problem does.
    span = problem.u_high - problem.u_low
    plans = rng.uniform(problem.u_low - 0.25 * span, problem.u_high + 0.25 * span,
                        (3, problem.horizon, problem.n_control))
    states = problem.rollout(x0, plans)
    costs = problem.cost(x0, target, plans)
    for i in range(3):
        _, info = env.reset(options={"state": x0[i], "target": target[i]})
        total, visited = 0.0, [info["state"]]
        for k in range(problem.horizon):
            _, reward, terminated, truncated, info = env.step(plans[i, k].astype(np.float32))
            total += reward
            visited.append(info["state"])
            if terminated:
                break
        assert terminated and not truncated
        np.testing.assert_allclose(np.array(visited), states[i, :len(visited)], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(-total, costs[i], rtol=1e-5)
        assert "terminal_error" in info and "success" in info


@pytest.mark.parametrize("env_id", IDS)
def test_observation_layout(env_id):
    env = gym.make(env_id)
    n = env.unwrapped.problem.n_state
    x0 = env.unwrapped.problem.sample_initial_states(np.random.default_rng(1), 1)[0]
    obs, info = env.reset(options={"state": x0})
    assert obs.dtype == np.float32
    np.testing.assert_allclose(obs[:n], x0, rtol=1e-6)
    np.testing.assert_allclose(obs[n:2 * n], info["target"], rtol=1e-6)
    assert obs[2 * n] == 1.0
    obs, *_ = env.step(env.action_space.sample())
    assert obs[2 * n] == pytest.approx(1.0 - 1.0 / env.unwrapped.problem.horizon)


@pytest.mark.parametrize("env_id", IDS)
def test_rgb_array_render(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.std() > 0  # something was drawn
    env.close()


def test_bad_actions_raise():
    env = gym.make("TRC-DoubleIntegrator-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action has shape"):
        env.step(np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.inf], dtype=np.float32))


def test_out_of_range_action_is_clipped():
    env = gym.make("TRC-DoubleIntegrator-v0").unwrapped
    env.reset(options={"state": np.zeros(2)})
    _, reward, *_ = env.step(np.array([100.0]))
    np.testing.assert_allclose(env.state, [0.5 * 4 * 0.33**2, 4 * 0.33])
    assert reward == pytest.approx(-0.1 * 16)


def test_bad_reset_options_raise():
    env = gym.make("TRC-DoubleIntegrator-v0")
    with pytest.raises(ValueError, match=r"options\['state'\] has shape"):
        env.reset(options={"state": np.zeros(3)})
    with pytest.raises(ValueError, match=r"options\['target'\] contains NaN"):
        env.reset(options={"target": np.array([np.nan, 0.0])})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"x0": np.zeros(2)})


def test_step_after_end_raises():
    env = gym.make("TRC-DoubleIntegrator-v0")
    env.reset(seed=0)
    for _ in range(15):
        env.step(np.zeros(1, dtype=np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, dtype=np.float32))


def test_unknown_env_id_raises():
    with pytest.raises(ValueError, match="unknown env id 'TRC-Nope-v0'"):
        trc_gym.make_problem("TRC-Nope-v0")
    with pytest.raises(ValueError, match="unknown env id"):
        trc_gym.expert_plan("TRC-Nope-v0", np.zeros((1, 2)), np.zeros((1, 2)))


def test_package_qualified_id():
    """Tooling that only knows the package name can make the env."""
    env = gym.make("trc_gym:TRC-DoubleIntegrator-v0")
    assert env.reset(seed=0)[0].shape == (5,)


def test_the_animation_is_one_frame_per_state_of_a_held_out_episode(tmp_path, monkeypatch):
    from pathlib import Path

    from PIL import Image

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "examples"))
    from animate import episode_frames, save_gif

    from baselines import ZeroPolicy

    env_id = "TRC-DoubleIntegrator-v0"
    x0, target = trc_gym.held_out_starts(env_id, 1)
    frames = episode_frames(ZeroPolicy(env_id), env_id, x0[0], target[0])
    horizon = trc_gym.make_problem(env_id).horizon
    assert len(frames) == horizon + 1 and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[-1])  # the state moved
    save_gif(frames, tmp_path / "episode.gif", 0.33)
    with Image.open(tmp_path / "episode.gif") as gif:
        assert gif.n_frames == horizon + 1 and gif.info["duration"] == 330
