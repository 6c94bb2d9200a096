"""The native vector env (`trc_gym.vector.ControlVectorEnv`, ``vectorization_mode=
"vector_entry_point"``) against Gymnasium's ``SyncVectorEnv`` over ``gym.make(env_id)``: the
same observations, rewards, terminations, truncations and infos from the same seeds and
actions, across autoresets and early failures; its spaces and metadata; bad input; seeding."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

import trc_gym
from trc_gym.vector import ControlVectorEnv

IDS = list(trc_gym.ENV_IDS)
DI, ROCKET, NAV = "TRC-DoubleIntegrator-v0", "TRC-Rocket-v0", "TRC-ObstacleNav-v0"
K = 4  # sub-envs of each comparison
# Actions that end an episode early in a failure: Rocket falls with its engine off (thrust
# below the bound, clipped to zero) and crashes; ObstacleNav accelerates straight at +x
# (beyond the bound, clipped) into an obstacle.
FAILING_ACTIONS = {ROCKET: [0.0, 0.0, -1.0], NAV: [3.0, 0.0]}


def make_pair(env_id, num_envs=K, **kwargs):
    native = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                          **kwargs)
    sync = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **kwargs)
    return native, sync


def assert_same_info(native, sync):
    assert set(native) == set(sync)
    for key, value in sync.items():
        if key.startswith("_"):
            np.testing.assert_array_equal(native[key], value, err_msg=key)
        else:  # compare where the info is set (the mask), as a user reads it
            mask = sync[f"_{key}"]
            assert native[key].dtype == value.dtype, key
            np.testing.assert_allclose(native[key][mask], value[mask], rtol=1e-9, atol=1e-12,
                                       err_msg=key)


def random_actions(problem, rng, num_envs=K):
    """Uniform actions reaching a quarter of the bound's width beyond it on each side."""
    span = problem.u_high - problem.u_low
    return rng.uniform(problem.u_low - 0.25 * span, problem.u_high + 0.25 * span,
                       (num_envs, problem.n_control)).astype(np.float32)


def step_both(native, sync, actions):
    """One step of each with the same actions; asserts they agree, returns the native's."""
    out, ref = native.step(actions), sync.step(actions)
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[1], ref[1], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(out[2], ref[2])
    np.testing.assert_array_equal(out[3], ref[3])
    assert out[0].dtype == np.float32 and out[1].dtype == np.float64
    assert out[2].dtype == np.bool_ and out[3].dtype == np.bool_
    assert_same_info(out[4], ref[4])
    return out


@pytest.mark.parametrize("env_id, kwargs", [(env_id, {}) for env_id in IDS]
                         + [(DI, {"random_target": True})])
def test_matches_sync_vector_env_over_autoresets(env_id, kwargs):
    native, sync = make_pair(env_id, **kwargs)
    problem = native.problem
    obs, info = native.reset(seed=11)
    ref_obs, ref_info = sync.reset(seed=11)
    np.testing.assert_array_equal(obs, ref_obs)
    assert_same_info(info, ref_info)
    rng = np.random.default_rng(0)
    ended, failed, after_end = 0, 0, 0
    done = np.zeros(K, dtype=bool)
    for _ in range(problem.horizon + problem.horizon // 2 + 2):
        actions = random_actions(problem, rng)
        if env_id in FAILING_ACTIONS:
            actions[::2] = FAILING_ACTIONS[env_id]  # half the envs fail, early
        _, reward, terminated, truncated, info = step_both(native, sync, actions)
        assert np.all(reward[done] == 0.0) and not np.any(terminated[done])  # autoreset
        after_end += done.sum()
        ended += terminated.sum()
        failed += info.get("failed", np.zeros(K, dtype=bool)).sum()
        done = terminated | truncated
    assert ended >= K and after_end >= K  # every env ended and was autoreset at least once
    if env_id in FAILING_ACTIONS:
        assert failed >= K // 2
    native.close()
    sync.close()


@pytest.mark.parametrize("env_id", [DI, ROCKET, NAV])
def test_success_flags_match_on_succeeding_episodes(env_id):
    """Episodes that succeed (a start at the target, held there), so the flags compared are
    not all False: DoubleIntegrator and ObstacleNav at rest at the target, Rocket 0.5 m above
    the pad, held there by a PD law on the observed altitude (thrust in kN = mass in t x the
    wanted acceleration in m/s^2, Mars's gravity included)."""
    native, sync = make_pair(env_id)
    problem = native.problem
    start = problem.sample_targets(np.random.default_rng(0), 1)[0]
    if env_id == ROCKET:
        start[2], start[6] = 0.5, 1.9  # m, t
    options = {"state": start, "target": problem.sample_targets(np.random.default_rng(0), 1)[0]}
    obs, _ = native.reset(seed=0, options=options)
    np.testing.assert_array_equal(obs, sync.reset(seed=0, options=options)[0])
    for _ in range(problem.horizon):
        actions = np.zeros((K, problem.n_control), dtype=np.float32)
        if env_id == ROCKET:
            actions[:, 2] = obs[:, 6] * (3.71 - 0.1 * obs[:, 2] - 0.5 * obs[:, 5])
        obs, _, terminated, _, info = step_both(native, sync, actions)
    assert terminated.all() and info["success"].all() and info["_success"].all()
    if env_id == ROCKET:
        assert info["_fuel_used"].all() and np.all(info["fuel_used"] > 0.0)


def test_time_limit_truncates_like_gym_make():
    native, sync = make_pair(DI, max_episode_steps=5)
    native.reset(seed=0)
    sync.reset(seed=0)
    rng = np.random.default_rng(0)
    truncations = 0
    for _ in range(12):
        truncations += step_both(native, sync, random_actions(native.problem, rng))[3].sum()
    assert truncations == 2 * K


def test_reset_options_and_reset_mask_match_sync():
    native, sync = make_pair(NAV)
    problem = native.problem
    x0 = problem.sample_initial_states(np.random.default_rng(5), 1)[0]
    for options in ({"state": x0}, {"target": x0}, {"state": x0, "target": x0}):
        obs, info = native.reset(seed=2, options=options)
        ref_obs, ref_info = sync.reset(seed=2, options=options)
        np.testing.assert_array_equal(obs, ref_obs)
        assert_same_info(info, ref_info)
    rng = np.random.default_rng(1)
    for _ in range(3):
        step_both(native, sync, random_actions(problem, rng))
    mask = np.array([True, False, True, False])
    obs, info = native.reset(seed=7, options={"reset_mask": mask})
    ref_obs, ref_info = sync.reset(seed=7, options={"reset_mask": mask.copy()})
    np.testing.assert_array_equal(obs, ref_obs)
    np.testing.assert_array_equal(info["_state"], mask)
    np.testing.assert_array_equal(info["state"][mask], ref_info["state"][mask])
    for _ in range(problem.horizon + 2):  # the reset envs end one step ahead of the others
        step_both(native, sync, random_actions(problem, rng))


def test_per_env_reset_states():
    envs = gym.make_vec(DI, num_envs=K, vectorization_mode="vector_entry_point")
    problem = envs.unwrapped.problem
    rng = np.random.default_rng(3)
    x0, target = problem.sample_initial_states(rng, K), rng.uniform(-1.0, 1.0, (K, 2))
    obs, info = envs.reset(options={"state": x0, "target": target})
    n = problem.n_state
    np.testing.assert_array_equal(info["state"], x0)
    np.testing.assert_array_equal(obs[:, :n], x0.astype(np.float32))
    np.testing.assert_array_equal(obs[:, n:2 * n], target.astype(np.float32))
    np.testing.assert_array_equal(obs[:, 2 * n], 1.0)


# --------------------------------------------------------------------- spaces and metadata
@pytest.mark.parametrize("env_id", IDS)
def test_spaces_metadata_and_observations_in_space(env_id):
    envs = gym.make_vec(env_id, num_envs=K)  # the registered vector entry point by default
    single = gym.make(env_id)
    assert isinstance(envs, VectorEnv) and isinstance(envs.unwrapped, ControlVectorEnv)
    assert envs.num_envs == K and envs.device == torch.device("cpu")
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.single_observation_space == single.observation_space
    assert envs.single_action_space == single.action_space
    assert envs.observation_space == batch_space(single.observation_space, K)
    assert envs.action_space == batch_space(single.action_space, K)
    obs, _ = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    envs.action_space.seed(0)
    for _ in range(5):
        obs, reward, *_ = envs.step(envs.action_space.sample())
        assert envs.observation_space.contains(obs) and reward.shape == (K,)
    assert envs.spec.id == env_id and envs.spec.kwargs["vectorization_mode"] == \
        "vector_entry_point"
    envs.close()


def test_device_accepts_a_name_or_a_torch_device():
    for device in ("cpu", torch.device("cpu")):
        envs = gym.make_vec(DI, num_envs=2, vectorization_mode="vector_entry_point",
                            device=device)
        assert envs.unwrapped.state.device == torch.device("cpu")


# ------------------------------------------------------------------------------ bad input
def test_bad_actions_raise_value_errors_naming_them():
    envs = gym.make_vec(DI, num_envs=K, vectorization_mode="vector_entry_point")
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.zeros((K, 1)))
    envs.reset(seed=0)
    for actions in (np.zeros(K), np.zeros((K, 2)), np.zeros((K + 1, 1)), np.zeros((1, 1)),
                    np.full((K, 1), np.nan), np.full((K, 1), np.inf), [["a"]] * K):
        with pytest.raises(ValueError, match="actions"):
            envs.step(actions)
    envs.step(np.zeros((K, 1)))  # still usable after a rejected action


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "", "meta", 3, None])
def test_bad_device_raises_value_error_naming_it(device):
    with pytest.raises(ValueError, match="device"):
        gym.make_vec(DI, num_envs=2, vectorization_mode="vector_entry_point", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_raises_value_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        gym.make_vec(DI, num_envs=2, vectorization_mode="vector_entry_point", device="cuda")


def test_bad_arguments_and_reset_options_raise_value_errors():
    make = gym.make_vec
    with pytest.raises(ValueError, match="render_mode"):
        make(DI, num_envs=2, vectorization_mode="vector_entry_point", render_mode="human")
    with pytest.raises(ValueError, match="num_envs"):
        make(DI, num_envs=0, vectorization_mode="vector_entry_point")
    with pytest.raises(ValueError, match="max_episode_steps"):
        make(DI, num_envs=2, vectorization_mode="vector_entry_point", max_episode_steps=0)
    envs = make(DI, num_envs=K, vectorization_mode="vector_entry_point")
    with pytest.raises(ValueError, match="first reset"):
        envs.reset(options={"reset_mask": np.array([True, False, True, False])})
    with pytest.raises(ValueError, match="unknown reset option"):
        envs.reset(options={"low": -1.0})
    with pytest.raises(ValueError, match=r"options\['state'\]"):
        envs.reset(options={"state": np.zeros((K, 3))})
    with pytest.raises(ValueError, match=r"options\['target'\]"):
        envs.reset(options={"target": np.full((K, 2), np.nan)})
    with pytest.raises(ValueError, match="seed"):
        envs.reset(seed=[1, 2])
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.zeros(K, dtype=bool)})
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.ones(K + 1, dtype=bool)})


# ------------------------------------------------------------------------------- seeding
def rollout(envs, seed, steps=20):
    """Observations and rewards of ``steps`` seeded random steps after ``reset(seed)``."""
    obs, _ = envs.reset(seed=seed)
    rng, out = np.random.default_rng(0), [obs]
    for _ in range(steps):
        obs, reward, *_ = envs.step(random_actions(envs.unwrapped.problem, rng, envs.num_envs))
        out += [obs, reward]
    return out


def test_seeding_is_deterministic():
    a = gym.make_vec(ROCKET, num_envs=K, vectorization_mode="vector_entry_point")
    b = gym.make_vec(ROCKET, num_envs=K, vectorization_mode="vector_entry_point")
    first, again = rollout(a, 3), rollout(b, 3)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], rollout(a, 4)[0])
    assert len({tuple(row) for row in first[0]}) == K  # each sub-env its own start
    # An int seed s seeds sub-env i with s + i, as SyncVectorEnv seeds them.
    np.testing.assert_array_equal(b.reset(seed=[3, 4, 5, 6])[0], first[0])
    assert a.unwrapped.np_random_seed == (4, 5, 6, 7)
    # Unseeded resets continue each sub-env's generator, as a single env's reset() does.
    single = gym.make(ROCKET)
    single.reset(seed=5)
    b.reset(seed=5)
    np.testing.assert_array_equal(b.reset()[0][0], single.reset()[0])
