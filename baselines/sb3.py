"""Stable-Baselines3 PPO and SAC on any registered env, trained and evaluated fairly.

    agent = train_ppo("TRC-DoubleIntegrator-v0", out_dir="runs/ppo_di")   # tuned budget
    trc_gym.evaluate(agent, "TRC-DoubleIntegrator-v0", 500)               # the shared harness
    agent = load_agent("runs/ppo_di")                                      # the selected model

What "fair" means here:

- hyperparameters come from one table (`baselines.hyperparameters`), per env and algorithm;
- the training env exposes the action as ``[-1, 1]^m`` (`UnitActionWrapper`), which PPO's
  Gaussian and SAC's tanh-squashed policy both expect; the agent maps back to physical units;
- observations (and, while training, rewards) are normalised by ``VecNormalize``; the agent
  carries a frozen copy of the observation statistics (`ObservationNormalizer`), saved with the
  model, and applies them to the RAW env observation in `SB3Agent.predict`, so
  `trc_gym.evaluate` steps ``gym.make(env_id)`` unchanged; rewards are never normalised there;
- every ``eval_freq`` env steps the current policy is evaluated on 200 validation starts
  (seed `VALIDATION_SEED`, disjoint from the test starts of `trc_gym.evaluation.HELD_OUT_SEED`)
  and the best one is kept (best-model saving); the test starts are only measured for the
  learning curve (``curve.csv``), never used to choose;
- environment steps are counted (the SB3 model's ``num_timesteps``, plus the validation steps
  spent on model selection), as is the training wall time.

A run directory holds ``best/`` and ``final/`` (each an agent: ``model.zip`` + ``agent.json``),
``curve.csv`` (env steps, validation and test gap, success) and ``training.json``.
"""

from __future__ import annotations

import copy
import csv
import inspect
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize
from torch import nn
from tqdm.auto import tqdm

from baselines.hyperparameters import RUN_KEYS, base_env_id, hyperparameters, is_tuned
from trc_gym.envs import env_class, make_problem
from trc_gym.envs.base import ControlEnv
from trc_gym.evaluation import (
    HELD_OUT_SEED,
    evaluate,
    expert_costs,
    held_out_starts,
    trajectory_metrics,
)
from trc_gym.problem import check_array

VALIDATION_SEED = 54321  # best-model selection; test starts use HELD_OUT_SEED, datasets seed 0
ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU,
                                           "gelu": nn.GELU}
AGENT_FORMAT = 1


# ---------------------------------------------------------------------------- actions
def to_physical(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map actions in ``[-1, 1]^m`` linearly onto the Box ``[low, high]`` (physical units)."""
    return low + (np.asarray(action, dtype=np.float64) + 1.0) * 0.5 * (high - low)


class UnitActionWrapper(gym.ActionWrapper):
    """Exposes a bounded Box action space as ``[-1, 1]^m`` and maps actions back linearly
    (the same map as `to_physical`, so training and `SB3Agent.predict` agree exactly)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"UnitActionWrapper needs a Box action space, got {space}")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(f"UnitActionWrapper needs finite action bounds, got {space}")
        self.low = space.low.astype(np.float64)
        self.high = space.high.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, space.shape, np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        return to_physical(action, self.low, self.high).astype(np.float32)


class ScaleReward(gym.RewardWrapper):
    """Multiplies the reward by a constant (training only; evaluation reads the raw env)."""

    def __init__(self, env: gym.Env, scale: float):
        super().__init__(env)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"reward_scale must be a positive number, got {scale}")
        self.scale = float(scale)

    def reward(self, reward: float) -> float:
        return self.scale * reward


def _training_wrappers(env: gym.Env, reward_scale: float = 1.0) -> gym.Env:
    env = UnitActionWrapper(env)
    return ScaleReward(env, reward_scale) if reward_scale != 1.0 else env


# ---------------------------------------------------------------------- observations
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
        self.algo = algo
        self.env_kwargs = dict(env_kwargs or {})
        self.info = dict(info or {})
        self.obs_dim = int(np.prod(model.observation_space.shape))

    def predict(self, observation: np.ndarray, state=None, episode_start=None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        obs = np.asarray(observation, dtype=np.float64)
        single = obs.ndim == 1
        obs = check_array(obs[None] if single else obs, "observation", (-1, self.obs_dim))
        unit, _ = self.model.predict(self.normalizer(obs), deterministic=deterministic)
        actions = to_physical(np.clip(unit, -1.0, 1.0), self.action_low, self.action_high)
        actions = actions.astype(np.float32)
        return (actions[0] if single else actions), None

    @property
    def n_parameters(self) -> int:
        """Parameters of the network that acts (PPO: policy MLP + action head; SAC: actor
        without the log-std head); the critic(s) are only needed for training."""
        return acting_parameters(self.model)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/model.zip`` and ``path/agent.json`` (replacing an existing agent there
        as a whole: the new one is written beside it, then swapped in)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        staging.chmod(0o755)  # mkdtemp makes it owner-only; the agent is meant to be shared
        try:
            buffer = io.BytesIO()
            self.model.save(buffer)
            (staging / "model.zip").write_bytes(buffer.getvalue())
            meta = {"format": AGENT_FORMAT, "algo": self.algo, "env_id": self.env_id,
                    "env_kwargs": self.env_kwargs, "action_low": self.action_low.tolist(),
                    "action_high": self.action_high.tolist(),
                    "normalizer": self.normalizer.to_json(), "info": self.info,
                    "n_parameters": self.n_parameters,
                    "stable_baselines3": stable_baselines3.__version__}
            (staging / "agent.json").write_text(json.dumps(meta, indent=2, default=_json_default))
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            if path.exists():
                os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path


def load_agent(path: str | os.PathLike) -> SB3Agent:
    """Load an agent saved by `SB3Agent.save`; a run directory (from `train_ppo` /
    `train_sac`) loads its selected model, ``best/``. FileNotFoundError / ValueError name the
    problem."""
    path = Path(path)
    if not (path / "agent.json").exists() and (path / "best" / "agent.json").exists():
        path = path / "best"
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
    model = ALGORITHMS[meta["algo"]].load(model_file, device="cpu", custom_objects=custom)
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


# --------------------------------------------------------------------- environments
def make_training_env(env_id: str, n_envs: int = 1, seed: int = 0,
                      env_kwargs: dict | None = None, vec_env: str = "dummy",
                      normalize: dict | None = None, gamma: float = 1.0,
                      reward_scale: float = 1.0) -> VecEnv:
    """The vectorised training env: ``n_envs`` copies of ``gym.make("trc_gym:<env_id>")``
    (the module prefix lets subprocesses import and register the package), each with a
    ``Monitor`` (raw returns), `UnitActionWrapper` and, unless 1, `ScaleReward`, seeded
    ``seed + rank``, under ``VecNormalize`` when ``normalize`` asks for observation or reward
    normalisation."""
    env_class(base_env_id(env_id))  # ValueError naming the registered ids
    if n_envs < 1:
        raise ValueError(f"n_envs must be positive, got {n_envs}")
    classes = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
    if vec_env not in classes:
        raise ValueError(f"vec_env must be one of {sorted(classes)}, got {vec_env!r}")
    venv = make_vec_env(f"trc_gym:{base_env_id(env_id)}", n_envs=n_envs, seed=seed,
                        env_kwargs=env_kwargs, wrapper_class=_training_wrappers,
                        wrapper_kwargs={"reward_scale": float(reward_scale)},
                        vec_env_cls=classes[vec_env])
    normalize = dict(normalize or {})
    unknown = set(normalize) - {"norm_obs", "norm_reward", "clip_obs", "clip_reward"}
    if unknown:
        raise ValueError(f"unknown normalize option(s) {sorted(unknown)}")
    if normalize.get("norm_obs") or normalize.get("norm_reward"):
        venv = VecNormalize(venv, gamma=gamma, **{"norm_obs": False, "norm_reward": False,
                                                  **normalize})
    return venv


# ----------------------------------------------------------------------- evaluation
def _steps_like_control_env(cls: type) -> bool:
    """Whether the env's step and observation are `ControlEnv`'s own (so an episode is exactly
    the problem's batched rollout of the issued controls)."""
    return all(getattr(cls, name) is getattr(ControlEnv, name)
               for name in ("step", "reset", "_observation"))


def evaluate_batched(agent: Any, env_id: str, n_episodes: int = 500,
                     seed: int = HELD_OUT_SEED, env_kwargs: dict | None = None) -> dict:
    """`trc_gym.evaluate`'s metrics (without the latency) of a closed-loop ``predict`` policy,
    stepping all episodes at once through the problem's batched step: the same observations
    (extras included), clipping, early termination on failure (the episode's later controls
    padded as the shared harness pads them) and cost as ``gym.make(env_id)`` (a test pins the
    agreement), far faster. Envs that override `ControlEnv`'s reset, step or observation fall
    back to `trc_gym.evaluate`."""
    cls = env_class(base_env_id(env_id))
    if not _steps_like_control_env(cls):
        return evaluate(agent, env_id, n_episodes, seed, env_kwargs=env_kwargs, use_plan=False)
    problem = make_problem(env_id, **(env_kwargs or {}))
    x0, target = held_out_starts(env_id, n_episodes, seed, env_kwargs)
    batch, horizon = len(x0), problem.horizon
    extras = np.asarray(problem.observation_extras(), dtype=np.float64).reshape(1, -1)
    no_control = np.clip(np.zeros(problem.n_control), problem.u_low, problem.u_high)
    x, dead, controls = x0, np.zeros(batch, dtype=bool), []
    for k in range(horizon):
        obs = np.concatenate([x, target, np.full((batch, 1), (horizon - k) / horizon),
                              np.repeat(extras, batch, axis=0)], axis=1)
        action, _ = agent.predict(obs.astype(np.float32), episode_start=np.full(batch, k == 0),
                                  deterministic=True)
        u = np.asarray(action, dtype=np.float64).reshape(batch, problem.n_control)
        u[dead] = no_control
        controls.append(u)
        x = np.where(dead[:, None], x, problem.step(x, u))
        dead |= problem.failed(x, k + 1)
    controls = np.stack(controls, axis=1)
    states = problem.rollout(x0, controls)
    metrics = trajectory_metrics(problem, target, controls, states,
                                 problem.cost(x0, target, controls))
    metrics["expert_cost"] = float(expert_costs(env_id, n_episodes, seed, env_kwargs).mean())
    metrics["gap"] = metrics["mean_cost"] / metrics["expert_cost"] - 1.0
    metrics["n_episodes"] = n_episodes
    return metrics


class EvaluationCallback(BaseCallback):
    """Every ``eval_freq`` env steps (at the first rollout start after it, so the policy has
    learnt from every step counted) and at the end: evaluate the current policy with frozen
    normalisation on validation starts, keep the best (lowest mean cost) policy weights and
    statistics, save it to ``out_dir/best`` when given, and log the learning curve (validation
    and, when ``n_curve > 0``, test-start metrics) to ``out_dir/curve.csv``."""

    def __init__(self, make_agent: Callable[[ObservationNormalizer, dict], SB3Agent],
                 env_id: str, env_kwargs: dict | None, eval_freq: int, n_validation: int = 200,
                 n_curve: int = 500, out_dir: Path | None = None):
        super().__init__()
        if eval_freq < 1:
            raise ValueError(f"eval_freq must be positive, got {eval_freq}")
        self.make_agent = make_agent
        self.env_id, self.env_kwargs = env_id, env_kwargs
        self.eval_freq, self.n_validation, self.n_curve = eval_freq, n_validation, n_curve
        self.out_dir = out_dir
        self.next_eval = eval_freq
        self.rows: list[dict[str, float]] = []
        self.best: dict[str, Any] | None = None  # state_dict, normalizer, metrics, env_steps
        self.curve_seconds = 0.0  # spent on test-start evaluation (measurement, not training)
        self.validation_env_steps = 0
        self.start = 0.0

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_rollout_start(self) -> None:
        # Here, not in _on_step: the policy has been updated with every step counted so far
        # (mid-rollout it would be the policy before the update that uses those steps).
        if self.num_timesteps >= self.next_eval:
            self.evaluate_now()
            while self.next_eval <= self.num_timesteps:
                self.next_eval += self.eval_freq

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if not self.rows or self.rows[-1]["env_steps"] != self.num_timesteps:
            self.evaluate_now()

    def evaluate_now(self) -> dict[str, float]:
        normalizer = ObservationNormalizer.from_vec_env(self.model.get_vec_normalize_env())
        agent = self.make_agent(normalizer, {})
        val = evaluate_batched(agent, self.env_id, self.n_validation, VALIDATION_SEED,
                               self.env_kwargs)
        self.validation_env_steps += self.n_validation * make_problem(
            self.env_id, **(self.env_kwargs or {})).horizon
        row = {"env_steps": self.num_timesteps,
               "wall_s": time.perf_counter() - self.start - self.curve_seconds,
               "val_mean_cost": val["mean_cost"], "val_gap": val["gap"],
               "val_success": val["success_rate"]}
        if self.n_curve:
            start = time.perf_counter()
            test = evaluate_batched(agent, self.env_id, self.n_curve, HELD_OUT_SEED,
                                    self.env_kwargs)
            self.curve_seconds += time.perf_counter() - start
            row.update(test_mean_cost=test["mean_cost"], test_gap=test["gap"],
                       test_success=test["success_rate"],
                       test_terminal_error=test["terminal_error"])
        self.rows.append(row)
        if self.best is None or val["mean_cost"] < self.best["validation"]["mean_cost"]:
            self.best = {"state_dict": copy.deepcopy(self.model.policy.state_dict()),
                         "normalizer": normalizer, "validation": val,
                         "env_steps": self.num_timesteps}
            if self.out_dir is not None:
                agent.info = {"selected_at_env_steps": self.num_timesteps, "validation": val}
                agent.save(self.out_dir / "best")
        if self.out_dir is not None:
            write_csv(self.out_dir / "curve.csv", self.rows)
        return row


class ProgressCallback(BaseCallback):
    """A tqdm bar over env steps, showing the latest validation gap."""

    def __init__(self, total: int, description: str, evaluation: EvaluationCallback | None):
        super().__init__()
        self.total, self.description, self.evaluation = total, description, evaluation
        self.bar: tqdm | None = None
        self.shown = 0

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, desc=self.description, unit="step", mininterval=1.0)

    def _on_step(self) -> bool:
        if self.bar.n + self.training_env.num_envs > self.bar.total:  # PPO rounds up to rollouts
            self.bar.total = self.bar.n + self.training_env.num_envs
        self.bar.update(self.training_env.num_envs)
        if self.evaluation is not None and len(self.evaluation.rows) > self.shown:
            self.shown = len(self.evaluation.rows)
            self.bar.set_postfix(val_gap=f"{self.evaluation.rows[-1]['val_gap']:+.2%}")
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------- training
def algorithm_kwargs(algo: str, params: dict[str, Any]) -> dict[str, Any]:
    """The SB3 constructor arguments from a hyperparameter dict (run settings removed,
    activation names and ``lin_<x>`` schedules resolved). ValueError on an unknown key."""
    cls = ALGORITHMS[algo]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "policy", "env"}
    kwargs = {k: v for k, v in params.items() if k not in RUN_KEYS}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"unknown {algo.upper()} hyperparameter(s) {unknown}; run settings are "
                         f"{list(RUN_KEYS)}, the rest must be {cls.__name__} arguments")
    policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
    if isinstance(policy_kwargs.get("activation_fn"), str):
        name = policy_kwargs["activation_fn"]
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
        policy_kwargs["activation_fn"] = ACTIVATIONS[name]
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    for key in ("learning_rate", "clip_range"):
        value = kwargs.get(key)
        if isinstance(value, str):
            if not value.startswith("lin_"):
                raise ValueError(f"{key} must be a number or 'lin_<x>', got {value!r}")
            initial = float(value.removeprefix("lin_"))
            kwargs[key] = _LinearSchedule(initial)
    return kwargs


@dataclass(frozen=True)
class _LinearSchedule:
    """``initial * progress_remaining`` (1 at the start of training, 0 at the end)."""

    initial: float

    def __call__(self, progress_remaining: float) -> float:
        return self.initial * progress_remaining


def train_agent(algo: str, env_id: str, total_timesteps: int | None = None, seed: int = 0,
                n_envs: int | None = None, eval_freq: int | None = None,
                out_dir: str | os.PathLike | None = None, progress_bar: bool = True, *,
                env_kwargs: dict | None = None, n_validation: int = 200, n_curve: int = 500,
                vec_env: str = "dummy", verbose: int = 0, **overrides: Any) -> SB3Agent:
    """Train ``algo`` ("ppo" or "sac") on ``env_id`` with the table's hyperparameters
    (``overrides`` replace single entries, e.g. ``learning_rate=3e-4``) and return the agent
    selected on validation starts (the final one when ``eval_freq=0``).

    ``total_timesteps`` / ``n_envs`` / ``eval_freq`` default to the table's budget, parallel
    envs and evaluation interval (env steps). ``n_curve`` test starts are measured at each
    evaluation for the learning curve (0: none). With ``out_dir``, writes ``best/``, ``final/``,
    ``curve.csv`` and ``training.json``. ``agent.info`` records the budget actually used:
    ``env_steps`` (training), ``validation_env_steps`` (model selection) and ``train_seconds``
    (wall time of training and validation, without the learning-curve measurement).
    """
    algo = algo.lower()
    params = hyperparameters(env_id, algo, **overrides)
    for key, value in (("n_timesteps", total_timesteps), ("n_envs", n_envs),
                       ("eval_freq", eval_freq)):
        if value is not None:
            params[key] = int(value)
    if params["n_timesteps"] < 1:
        raise ValueError(f"total_timesteps must be positive, got {params['n_timesteps']}")
    if params["eval_freq"] < 0:
        raise ValueError(f"eval_freq must be >= 0, got {params['eval_freq']}")
    kwargs = algorithm_kwargs(algo, params)
    env_id = base_env_id(env_id)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    venv = make_training_env(env_id, params["n_envs"], seed, env_kwargs, vec_env,
                             params["normalize"], float(kwargs.get("gamma", 0.99)),
                             float(params.get("reward_scale", 1.0)))
    model = ALGORITHMS[algo]("MlpPolicy", venv, seed=seed, device="cpu", verbose=verbose,
                             **kwargs)
    space = env_class(env_id)(**(env_kwargs or {})).action_space

    def make_agent(normalizer: ObservationNormalizer, info: dict) -> SB3Agent:
        return SB3Agent(model, normalizer, env_id, space.low, space.high, algo, env_kwargs, info)

    callbacks: list[BaseCallback] = []
    evaluation = None
    if params["eval_freq"] > 0:
        evaluation = EvaluationCallback(make_agent, env_id, env_kwargs, params["eval_freq"],
                                        n_validation, n_curve, out)
        callbacks.append(evaluation)
    if progress_bar:
        callbacks.append(ProgressCallback(params["n_timesteps"], f"{algo.upper()} {env_id}",
                                          evaluation))
    start = time.perf_counter()
    model.learn(params["n_timesteps"], callback=callbacks)
    seconds = time.perf_counter() - start - (evaluation.curve_seconds if evaluation else 0.0)
    venv.close()

    record = {"algo": algo, "env_id": env_id, "seed": seed, "hyperparameters": params,
              "tuned": is_tuned(env_id, algo), "env_steps": int(model.num_timesteps),
              "validation_env_steps": evaluation.validation_env_steps if evaluation else 0,
              "train_seconds": seconds, "torch_threads": torch.get_num_threads(),
              "n_validation": n_validation, "n_curve": n_curve if evaluation else 0}
    final = make_agent(ObservationNormalizer.from_vec_env(model.get_vec_normalize_env()),
                       {**record, "selected": "final", "selected_at_env_steps":
                        int(model.num_timesteps)})
    if evaluation is not None:
        final.info["validation"] = evaluation.rows[-1] if evaluation.rows else None
    if out is not None:
        final.save(out / "final")
    agent = final
    if evaluation is not None and evaluation.best is not None:
        best = evaluation.best
        model.policy.load_state_dict(best["state_dict"])
        agent = make_agent(best["normalizer"], {**record, "selected": "best on validation",
                                                "selected_at_env_steps": best["env_steps"],
                                                "validation": best["validation"]})
        if out is not None:
            agent.save(out / "best")
    if out is not None:
        write_json(out / "training.json", {**agent.info, "curve": evaluation.rows
                                           if evaluation else []})
    return agent


def train_ppo(env_id: str, total_timesteps: int | None = None, seed: int = 0,
              n_envs: int | None = None, eval_freq: int | None = None,
              out_dir: str | os.PathLike | None = None, progress_bar: bool = True,
              **overrides: Any) -> SB3Agent:
    """PPO on ``env_id`` with the tuned table's settings; see `train_agent`."""
    return train_agent("ppo", env_id, total_timesteps, seed, n_envs, eval_freq, out_dir,
                       progress_bar, **overrides)


def train_sac(env_id: str, total_timesteps: int | None = None, seed: int = 0,
              n_envs: int | None = None, eval_freq: int | None = None,
              out_dir: str | os.PathLike | None = None, progress_bar: bool = True,
              **overrides: Any) -> SB3Agent:
    """SAC on ``env_id`` with the tuned table's settings; see `train_agent`."""
    return train_agent("sac", env_id, total_timesteps, seed, n_envs, eval_freq, out_dir,
                       progress_bar, **overrides)


# ------------------------------------------------------------------------ file output
def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, type):
        return value.__name__
    return str(value)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as CSV atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_curve(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a ``curve.csv`` written during training (numbers as floats)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
