"""A trained Stable-Baselines3 agent and its file format.

`SB3Agent` is what acts in the raw env: the SB3 model, a frozen copy of the observation
statistics it was trained with (`ObservationNormalizer`, applied to the raw env observation) and
the map from the ``[-1, 1]^m`` actions it was trained on (Gymnasium's ``RescaleAction``) back to
the env's physical bound, so `trc_gym.evaluate` steps ``gym.make(env_id)`` unchanged.

A saved agent is a folder: ``model.zip`` (SB3's own file) and ``agent.json`` (format, algorithm,
env, action bound, normalisation, training record). Loading replaces SB3's pickled schedules, so
nothing is unpickled but the weights.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from gymnasium.wrappers.utils import rescale_box
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from baselines.hyperparameters import base_env_id
from trc_gym.devices import resolve_device
from trc_gym.files import atomic_directory, write_json
from trc_gym.problem import check_array

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}
AGENT_FORMAT = 1


def unit_action_map(low: np.ndarray, high: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The map ``RescaleAction(env, -1, 1)`` applies to an action in ``[-1, 1]^m`` before the
    env of bound ``[low, high]`` steps it: the agent acts with exactly the map it trained on."""
    box = gym.spaces.Box(np.asarray(low, np.float32), np.asarray(high, np.float32),
                         dtype=np.float32)
    return rescale_box(box, np.float32(-1.0), np.float32(1.0))[2]


@dataclass(frozen=True)
class ObservationNormalizer:
    """A frozen copy of ``VecNormalize``'s observation statistics: ``clip((obs - mean) /
    sqrt(var + eps), -clip, +clip)``, exactly as ``VecNormalize.normalize_obs``. ``mean is None``
    means no normalisation. It has no update method: evaluation cannot change it."""

    mean: np.ndarray | None = None
    var: np.ndarray | None = None
    clip_obs: float = 10.0
    epsilon: float = 1e-8

    @classmethod
    def from_vec_env(cls, venv: VecEnv | None) -> ObservationNormalizer:
        """The current statistics of ``venv`` (identity when it is no ``VecNormalize`` or does
        not normalise observations)."""
        if not isinstance(venv, VecNormalize) or not venv.norm_obs:
            return cls()
        return cls(venv.obs_rms.mean.copy(), venv.obs_rms.var.copy(), float(venv.clip_obs),
                   float(venv.epsilon))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.mean is None:
            return np.asarray(obs, dtype=np.float32)
        normalized = np.clip((obs - self.mean) / np.sqrt(self.var + self.epsilon),
                             -self.clip_obs, self.clip_obs)
        return normalized.astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        if self.mean is None:
            return {"enabled": False}
        return {"enabled": True, "mean": self.mean.tolist(), "var": self.var.tolist(),
                "clip_obs": self.clip_obs, "epsilon": self.epsilon}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ObservationNormalizer:
        if not data.get("enabled"):
            return cls()
        mean, var = np.asarray(data["mean"], np.float64), np.asarray(data["var"], np.float64)
        if mean.shape != var.shape or mean.ndim != 1 or np.any(var < 0):
            raise ValueError(f"bad observation statistics: mean {mean.shape}, var {var.shape}")
        return cls(mean, var, float(data["clip_obs"]), float(data["epsilon"]))


# ----------------------------------------------------------------------------- agent
class SB3Agent:
    """A trained SB3 model plus what it needs to act in the raw env: the frozen observation
    normalisation and the map from ``[-1, 1]^m`` to the env's physical action bound.

    ``predict(obs [B, obs_dim] or [obs_dim]) -> (actions [B, m] or [m] in physical units,
    None)``, SB3's signature, so `trc_gym.evaluate` and SB3 tooling use it as they use any model.
    ``info`` holds the training record (hyperparameters, env steps, wall time, validation).
    """

    def __init__(self, model: BaseAlgorithm, normalizer: ObservationNormalizer, env_id: str,
                 action_low: np.ndarray, action_high: np.ndarray, algo: str,
                 env_kwargs: dict | None = None, info: dict[str, Any] | None = None):
        self.model = model
        self.normalizer = normalizer
        self.env_id = base_env_id(env_id)
        self.action_low = np.asarray(action_low, dtype=np.float64)
        self.action_high = np.asarray(action_high, dtype=np.float64)
        self.to_physical = unit_action_map(self.action_low, self.action_high)
        self.algo = algo
        self.env_kwargs = dict(env_kwargs or {})
        self.info = dict(info or {})
        self.obs_dim = int(np.prod(model.observation_space.shape))

    def predict(self, observation: np.ndarray, state=None, episode_start=None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        obs = check_array(observation, "observation", None)
        single = obs.ndim == 1
        obs = check_array(obs[None] if single else obs, "observation", (-1, self.obs_dim))
        unit, _ = self.model.predict(self.normalizer(obs), deterministic=deterministic)
        actions = self.to_physical(np.clip(unit, -1.0, 1.0).astype(np.float32))
        return (actions[0] if single else actions), None

    @property
    def n_parameters(self) -> int:
        """Parameters of the network that acts (PPO: policy MLP + action head; SAC: actor
        without the log-std head); the critic(s) are only needed for training."""
        return acting_parameters(self.model)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/model.zip`` and ``path/agent.json`` (replacing an existing agent there
        as a whole; see `trc_gym.files.atomic_directory`)."""
        def fill(staging: Path) -> None:
            buffer = io.BytesIO()
            self.model.save(buffer)
            (staging / "model.zip").write_bytes(buffer.getvalue())
            meta = {"format": AGENT_FORMAT, "algo": self.algo, "env_id": self.env_id,
                    "env_kwargs": self.env_kwargs, "action_low": self.action_low.tolist(),
                    "action_high": self.action_high.tolist(),
                    "normalizer": self.normalizer.to_json(), "info": self.info,
                    "n_parameters": self.n_parameters,
                    "stable_baselines3": stable_baselines3.__version__}
            write_json(staging / "agent.json", meta)

        return atomic_directory(path, fill)


def load_agent(path: str | os.PathLike, device: str | torch.device = "cpu") -> SB3Agent:
    """Load an agent saved by `SB3Agent.save`; a run directory (from `train_ppo` /
    `train_sac`) loads its selected model: ``best/``, or ``final/`` where training ran without
    validation. FileNotFoundError / ValueError name the problem."""
    path = Path(path)
    path = next((p for p in (path, path / "best", path / "final")
                 if (p / "agent.json").exists()), path)
    meta_file, model_file = path / "agent.json", path / "model.zip"
    for file in (meta_file, model_file):
        if not file.exists():
            raise FileNotFoundError(f"no SB3 agent at {path}: {file.name} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_file} is not valid JSON: {exc}") from exc
    if meta.get("format") != AGENT_FORMAT or meta.get("algo") not in ALGORITHMS:
        raise ValueError(f"{meta_file}: unsupported agent (format {meta.get('format')!r}, "
                         f"algo {meta.get('algo')!r})")
    # Schedules are only needed to continue training: replace them so nothing is unpickled.
    custom = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}
    model = ALGORITHMS[meta["algo"]].load(model_file, device=resolve_device(device),
                                          custom_objects=custom)
    return SB3Agent(model, ObservationNormalizer.from_json(meta["normalizer"]), meta["env_id"],
                    np.asarray(meta["action_low"]), np.asarray(meta["action_high"]),
                    meta["algo"], meta.get("env_kwargs"), meta.get("info"))


def acting_parameters(model: BaseAlgorithm) -> int:
    """Number of parameters used to compute a deterministic action."""
    policy = model.policy
    if isinstance(model, SAC):
        modules = [policy.actor.latent_pi, policy.actor.mu]
    else:
        modules = [policy.features_extractor, policy.mlp_extractor.policy_net, policy.action_net]
    return sum(p.numel() for m in modules for p in m.parameters())
