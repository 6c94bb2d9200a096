"""Stable-Baselines3 PPO and SAC on any registered env, trained and selected fairly.

    agent = train_ppo("TRC-DoubleIntegrator-v0", out_dir="runs/ppo_di")   # tuned budget
    trc_gym.evaluate(agent, "TRC-DoubleIntegrator-v0", 500)               # the shared harness
    agent = load_agent("runs/ppo_di")                                      # the selected model

What "fair" means here:

- hyperparameters come from one table (`baselines.hyperparameters`), per env and algorithm;
- the training env exposes the action as ``[-1, 1]^m`` (Gymnasium's ``RescaleAction``), which
  PPO's Gaussian and SAC's tanh-squashed policy both expect; the agent maps back with the same
  map (`baselines.agent`);
- observations (and, while training, rewards) are normalised by ``VecNormalize``; the agent
  carries a frozen copy of the observation statistics and applies them to the raw env
  observation, so `trc_gym.evaluate` steps ``gym.make(env_id)`` unchanged; rewards are never
  normalised there;
- every ``eval_freq`` env steps the current policy is evaluated on 200 validation starts
  (`trc_gym.evaluation.VALIDATION_SEED`, disjoint from the test starts) and the best one is kept;
  the test starts are only measured for the learning curve (``curve.csv``), never used to choose;
- environment steps are counted (the SB3 model's ``num_timesteps``, plus the validation steps
  spent on model selection), as is the training wall time.

A run directory holds ``best/`` and ``final/`` (each an agent), ``curve.csv`` (env steps,
validation and test gap, success) and ``training.json``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers import RescaleAction, TransformReward
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import get_linear_fn
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize
from torch import nn
from tqdm.auto import tqdm

from baselines.agent import ALGORITHMS, ObservationNormalizer, SB3Agent
from baselines.hyperparameters import RUN_KEYS, base_env_id, hyperparameters, is_tuned
from trc_gym.devices import resolve_device
from trc_gym.envs import env_class, make_problem
from trc_gym.evaluation import (
    HELD_OUT_SEED,
    VALIDATION_SEED,
    evaluate,
    feedback_path,
)
from trc_gym.files import write_csv, write_json

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU,
                                           "gelu": nn.GELU}


# --------------------------------------------------------------------- environments
def training_wrappers(env: gym.Env, reward_scale: float = 1.0) -> gym.Env:
    """Actions in ``[-1, 1]^m``, and rewards times ``reward_scale`` (training only)."""
    if not (reward_scale > 0 and reward_scale < float("inf")):
        raise ValueError(f"reward_scale must be a positive number, got {reward_scale}")
    env = RescaleAction(env, np.float32(-1.0), np.float32(1.0))  # as `unit_action_map`
    if reward_scale != 1.0:
        env = TransformReward(env, functools.partial(operator.mul, float(reward_scale)))
    return env


def make_training_env(env_id: str, n_envs: int = 1, seed: int = 0,
                      env_kwargs: dict | None = None, vec_env: str = "dummy",
                      normalize: dict | None = None, gamma: float = 1.0,
                      reward_scale: float = 1.0) -> VecEnv:
    """The vectorised training env: ``n_envs`` copies of ``gym.make("trc_gym:<env_id>")``
    (the module prefix lets subprocesses import and register the package), each with a
    ``Monitor`` (raw returns) and `training_wrappers`, seeded
    ``seed + rank``, under ``VecNormalize`` when ``normalize`` asks for observation or reward
    normalisation."""
    env_class(base_env_id(env_id))  # ValueError naming the registered ids
    if n_envs < 1:
        raise ValueError(f"n_envs must be positive, got {n_envs}")
    classes = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
    if vec_env not in classes:
        raise ValueError(f"vec_env must be one of {sorted(classes)}, got {vec_env!r}")
    venv = make_vec_env(f"trc_gym:{base_env_id(env_id)}", n_envs=n_envs, seed=seed,
                        env_kwargs=env_kwargs, wrapper_class=training_wrappers,
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


# ----------------------------------------------------------------------- callbacks
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

    def evaluate(self, agent: SB3Agent, n: int, seed: int) -> dict[str, float]:
        """`trc_gym.evaluate` without latency, batched through the problem where the env
        allows."""
        path = feedback_path(self.env_id)
        return evaluate(agent, self.env_id, n, seed, env_kwargs=self.env_kwargs, path=path,
                        latency_samples=0)

    def evaluate_now(self) -> dict[str, float]:
        normalizer = ObservationNormalizer.from_vec_env(self.model.get_vec_normalize_env())
        agent = self.make_agent(normalizer, {})
        val = self.evaluate(agent, self.n_validation, VALIDATION_SEED)
        self.validation_env_steps += self.n_validation * make_problem(
            self.env_id, **(self.env_kwargs or {})).horizon
        row = {"env_steps": self.num_timesteps,
               "wall_s": time.perf_counter() - self.start - self.curve_seconds,
               "val_mean_cost": val["mean_cost"], "val_gap": val["gap"],
               "val_success": val["success_rate"]}
        if self.n_curve:
            start = time.perf_counter()
            test = self.evaluate(agent, self.n_curve, HELD_OUT_SEED)
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
            kwargs[key] = get_linear_fn(float(value.removeprefix("lin_")), 0.0, 1.0)
    return kwargs


def train_agent(algo: str, env_id: str, total_timesteps: int | None = None, seed: int = 0,
                n_envs: int | None = None, eval_freq: int | None = None,
                out_dir: str | os.PathLike | None = None, progress_bar: bool = True, *,
                env_kwargs: dict | None = None, n_validation: int = 200, n_curve: int = 500,
                vec_env: str = "dummy", verbose: int = 0, device: str = "cpu",
                **overrides: Any) -> SB3Agent:
    """Train ``algo`` ("ppo" or "sac") on ``env_id`` with the table's hyperparameters
    (``overrides`` replace single entries, e.g. ``learning_rate=3e-4``) and return the agent
    selected on validation starts (the final one when ``eval_freq=0``).

    ``total_timesteps`` / ``n_envs`` / ``eval_freq`` default to the table's budget, parallel
    envs and evaluation interval (env steps). ``n_curve`` test starts are measured at each
    evaluation for the learning curve (0: none). With ``out_dir``, writes ``best/``, ``final/``,
    ``curve.csv`` and ``training.json``. ``agent.info`` records the budget actually used:
    ``env_steps`` (training), ``validation_env_steps`` (model selection) and ``train_seconds``
    (wall time of training and validation, without the learning-curve measurement).
    ``device`` (see `trc_gym.devices.resolve_device`) defaults to the CPU: SB3 runs its MLP
    policies faster there than on a GPU.
    """
    algo = algo.lower()
    device = resolve_device(device, "device")
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
    model = ALGORITHMS[algo]("MlpPolicy", venv, seed=seed, device=device, verbose=verbose,
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
