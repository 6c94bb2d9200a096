"""The registered environments. `import trc_gym` registers every id listed in `ENV_ENTRY_POINTS`."""

from __future__ import annotations

import inspect

import gymnasium as gym

DEFAULT_ENV_ID = "TRC-DoubleIntegrator-v0"  # what the CLI and the main job run by default

# One line per env: its id and the class implementing it (each in a self-contained file).
ENV_ENTRY_POINTS: dict[str, str] = {
    "TRC-DoubleIntegrator-v0": "trc_gym.envs.double_integrator:DoubleIntegratorEnv",
    "TRC-VanDerPol-v0": "trc_gym.envs.van_der_pol:VanDerPolEnv",
    "TRC-Pendulum-v0": "trc_gym.envs.pendulum:PendulumEnv",
    "TRC-CartPole-v0": "trc_gym.envs.cart_pole:CartPoleEnv",
    "TRC-Quadrotor2D-v0": "trc_gym.envs.quadrotor_2d:Quadrotor2DEnv",
    "TRC-Rocket-v0": "trc_gym.envs.rocket:RocketEnv",
    "TRC-ObstacleNav-v0": "trc_gym.envs.obstacle_nav:ObstacleNavEnv",
}


def env_name(env_id: str) -> str:
    """``TRC-DoubleIntegrator-v0`` -> ``DoubleIntegrator``: the stem of an env's run folders
    and files."""
    return env_id.removeprefix("TRC-").removesuffix("-v0")


def register_envs() -> None:
    """Register every id of `ENV_ENTRY_POINTS`: ``gym.make(id)`` makes its `ControlEnv`;
    ``gym.make_vec(id, num_envs, vectorization_mode="vector_entry_point")`` makes the batched
    `trc_gym.vector.ControlVectorEnv` of it, through ``trc_gym.vector:make_<env name>`` (by
    name, as the entry points are: nothing loads until an env is made)."""
    for env_id, entry_point in ENV_ENTRY_POINTS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point,
                         vector_entry_point=f"trc_gym.vector:make_{env_name(env_id)}")


def env_class(env_id: str):
    """The env class registered under ``env_id`` (ValueError naming the known ids if none)."""
    if env_id not in ENV_ENTRY_POINTS:
        raise ValueError(f"unknown env id {env_id!r}; registered: {sorted(ENV_ENTRY_POINTS)}")
    module, name = ENV_ENTRY_POINTS[env_id].split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def make_problem(env_id: str, **kwargs):
    """The `ControlProblem` behind ``env_id`` (kwargs go to the problem, e.g. random_target)."""
    cls = env_class(env_id).problem_class
    options = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"{env_id} has no option(s) {unknown}; its options: {options}")
    return cls(**kwargs)


def make_expert(env_id: str, **kwargs):
    """The `trc_gym.experts.Expert` that ``env_id`` names, for its problem made with
    ``kwargs``."""
    return env_class(env_id).expert_class(make_problem(env_id, **kwargs))
