"""The one evaluation harness: every policy is judged here, on the same held-out starts, by the
same numbers (the metrics of PROBLEMS.md).

Anything with ``plan(x0, target) -> U`` is evaluated batched through the problem's rollout (the
same states and cost as stepping the env, which a test pins); anything else with SB3's
``predict`` is stepped through ``gym.make(env_id)``, one env per episode, every episode's
observation handed to ``predict`` as one batch per time step.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from trc_gym.envs import make_problem
from trc_gym.problem import ControlProblem

HELD_OUT_SEED = 12345  # evaluation starts; datasets default to seed 0, so the sets are disjoint
_expert_cache: dict[tuple, np.ndarray] = {}


def held_out_starts(env_id: str, n: int, seed: int = HELD_OUT_SEED,
                    env_kwargs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x0 [n, n_state], target [n, n_state])`` drawn from the env's start distribution."""
    problem = make_problem(env_id, **(env_kwargs or {}))
    rng = np.random.default_rng(seed)
    return problem.sample_initial_states(rng, n), problem.sample_targets(rng, n)


def expert_costs(env_id: str, n: int, seed: int = HELD_OUT_SEED,
                 env_kwargs: dict | None = None) -> np.ndarray:
    """The expert's cost on the held-out starts ``[n]`` (computed once per process)."""
    key = (env_id, n, seed, tuple(sorted((env_kwargs or {}).items())))
    if key not in _expert_cache:
        problem = make_problem(env_id, **(env_kwargs or {}))
        x0, target = held_out_starts(env_id, n, seed, env_kwargs)
        _expert_cache[key] = problem.cost(x0, target, problem.expert_plan(x0, target))
    return _expert_cache[key]


def trajectory_metrics(problem: ControlProblem, target: np.ndarray, controls: np.ndarray,
                       states: np.ndarray, costs: np.ndarray) -> dict[str, float]:
    """Metrics of episodes given their controls as issued ``[B, N, m]``, states
    ``[B, N+1, n]`` and total costs ``[B]``."""
    final_error = problem.state_error_np(states[:, -1], target)
    applied = np.clip(controls, problem.u_low, problem.u_high)
    out_of_bound = np.any((controls < problem.u_low - 1e-6) | (controls > problem.u_high + 1e-6),
                          axis=(1, 2))
    metrics = {
        "mean_cost": float(costs.mean()),
        "terminal_error": float(np.linalg.norm(final_error, axis=1).mean()),
    }
    for group, indices in problem.error_groups.items():
        metrics[f"terminal_error_{group}"] = float(
            np.linalg.norm(final_error[:, list(indices)], axis=1).mean())
    alive = problem.alive_mask(states)  # steps after a failure (episode ended) are not taken
    metrics["effort"] = float((np.einsum("bki,ij,bkj->bk", applied, problem.R, applied)
                               * alive).sum(1).mean())
    metrics["success_rate"] = float(problem.success(states, target).mean())
    metrics["violations"] = float((out_of_bound | problem.constraint_violations(states)).mean())
    return metrics


def evaluate(policy: Any, env_id: str, n_episodes: int = 1000, seed: int = HELD_OUT_SEED, *,
             env_kwargs: dict | None = None, use_plan: bool | None = None,
             latency_samples: int = 20) -> dict[str, float]:
    """Evaluate ``policy`` on ``n_episodes`` held-out starts of ``env_id``.

    Returns the mean cost, the expert's mean cost on the same starts and the ``gap``
    (``J_policy / J_expert - 1``, ratio of the means), terminal error (total and per state
    group), control effort ``sum u'Ru``, success rate, the fraction of episodes with a
    constraint violation (controls issued outside the bound count), and ``ms_per_plan``: the
    median wall time to plan one episode at batch 1 (for a stepped policy: the mean time of
    its N ``predict`` calls per episode, stepping the first ``latency_samples`` episodes one at
    a time).
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be positive, got {n_episodes}")
    problem = make_problem(env_id, **(env_kwargs or {}))
    x0, target = held_out_starts(env_id, n_episodes, seed, env_kwargs)
    if use_plan is None:
        use_plan = acts_by_plan(policy)
    if use_plan:
        controls = np.asarray(policy.plan(x0, target), dtype=np.float64)
        states = problem.rollout(x0, controls)
        costs = problem.cost(x0, target, controls)
        ms_per_plan = plan_latency_ms(policy, x0[:latency_samples], target[:latency_samples])
    else:
        controls, states, costs, _ = step_episodes(policy, env_id, x0, target, env_kwargs)
        k = min(latency_samples, n_episodes)  # latency: episodes one at a time, as one robot
        seconds = step_episodes(policy, env_id, x0[:k], target[:k], env_kwargs, batch=1)[3]
        ms_per_plan = 1000.0 * seconds / k
    metrics = trajectory_metrics(problem, target, controls, states, costs)
    expert = expert_costs(env_id, n_episodes, seed, env_kwargs)
    metrics["expert_cost"] = float(expert.mean())
    metrics["gap"] = metrics["mean_cost"] / metrics["expert_cost"] - 1.0
    metrics["ms_per_plan"] = ms_per_plan
    metrics["n_episodes"] = n_episodes
    return metrics


def acts_by_plan(policy: Any) -> bool:
    """Whether ``policy`` acts by executing one plan per episode (evaluated batched through the
    problem's rollout) rather than through ``predict`` (a receding-horizon planner replans at
    every step, so it is stepped like any feedback policy)."""
    return hasattr(policy, "plan") and not getattr(policy, "receding_horizon", False)


def plan_latency_ms(policy: Any, x0: np.ndarray, target: np.ndarray) -> float:
    """Median wall time of ``policy.plan`` on one start (batch 1), in ms, on one thread (a
    planner serves one robot; threads only add overhead at batch 1), after one warm-up call."""
    return plan_latencies_ms({"policy": policy}, x0, target)["policy"]


def plan_latencies_ms(policies: dict[str, Any], x0: np.ndarray, target: np.ndarray,
                      block: int = 10) -> dict[str, float]:
    """`plan_latency_ms` of several policies, timed in turn on blocks of ``block`` starts, so
    that a machine whose speed drifts (shared cores, throttling) slows them alike and their
    ratios hold (blocks rather than single starts keep each policy's caches warm, as one
    policy's calls in a row are)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {name: [] for name in policies}
    try:
        for policy in policies.values():
            policy.plan(x0[:1], target[:1])
        for first in range(0, len(x0), block):
            for name, policy in policies.items():
                for i in range(first, min(first + block, len(x0))):
                    start = time.perf_counter()
                    policy.plan(x0[i:i + 1], target[i:i + 1])
                    times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {name: 1000.0 * float(np.median(t)) for name, t in times.items()}


def batch_ms_per_plan(policy: Any, x0: np.ndarray, target: np.ndarray, repeats: int = 3) -> float:
    """Amortised ms per plan when planning all of ``x0`` in one call (best of ``repeats``)."""
    policy.plan(x0, target)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        policy.plan(x0, target)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(x0)


def step_episodes(policy: Any, env_id: str, x0: np.ndarray, target: np.ndarray,
                  env_kwargs: dict | None, batch: int | None = None):
    """Run each episode through its own ``gym.make(env_id)`` with ``policy.predict``, in
    lockstep groups of ``batch`` episodes (default: all at once), so the policy acts on a batch
    of observations per time step. An episode that ends early (a failure) is padded as the
    batched rollout pads it: its last state repeated, with zero controls (clipped into the
    bound) that are never applied. Returns controls ``[B, N, m]``, states ``[B, N+1, n]``,
    costs ``[B]`` and the total seconds spent in ``predict``."""
    batch = batch or len(x0)
    envs = [gym.make(env_id, **(env_kwargs or {})) for _ in range(min(batch, len(x0)))]
    problem = envs[0].unwrapped.problem
    resting = np.clip(np.zeros(problem.n_control), problem.u_low, problem.u_high)
    controls = np.zeros((len(x0), problem.horizon, problem.n_control))
    states = np.zeros((len(x0), problem.horizon + 1, problem.n_state))
    costs, seconds = np.zeros(len(x0)), 0.0
    for first in range(0, len(x0), batch):
        group = np.arange(first, min(first + batch, len(x0)))
        obs, running = [], np.ones(len(group), dtype=bool)
        for env, i in zip(envs, group, strict=False):
            o, info = env.reset(options={"state": x0[i], "target": target[i]})
            obs.append(o)
            states[i] = info["state"]  # the whole row, so a failed episode's tail repeats it
        # Ended episodes keep their last observation in the batch (their actions are dropped),
        # so the batch a stateful policy sees never changes size mid-episode.
        for k in range(problem.horizon):
            start = time.perf_counter()
            actions, _ = policy.predict(np.stack(obs), episode_start=np.full(len(obs), k == 0),
                                        deterministic=True)
            seconds += time.perf_counter() - start
            actions = np.asarray(actions, dtype=np.float64).reshape(len(obs), -1)
            for j in np.flatnonzero(running):
                i = group[j]
                obs[j], reward, terminated, truncated, info = envs[j].step(actions[j])
                controls[i, k] = actions[j]
                states[i, k + 1:] = info["state"]
                costs[i] -= reward
                if terminated or truncated:
                    running[j] = False
                    controls[i, k + 1:] = resting
            if not running.any():
                break
    for env in envs:
        env.close()
    return controls, states, costs, seconds


COLUMNS = {  # metric key -> (header, format)
    "mean_cost": ("mean cost", "{:.3f}"),
    "gap": ("gap to expert", "{:+.2%}"),
    "success_rate": ("success", "{:.1%}"),
    "terminal_error": ("terminal error", "{:.4f}"),
    "effort": ("effort", "{:.3f}"),
    "ms_per_plan": ("ms/plan", "{:.2f}"),
}


def format_table(results: dict[str, dict[str, Any]], columns: dict | None = None) -> str:
    """A markdown table with one row per policy (``results[name] = metrics``)."""
    columns = dict(columns or COLUMNS)
    extra = sorted({k for m in results.values() for k in m if k.startswith("terminal_error_")})
    if columns is COLUMNS or columns == COLUMNS:
        for key in extra:
            columns[key] = (key.removeprefix("terminal_error_") + " error", "{:.4f}")
    lines = ["| policy | " + " | ".join(h for h, _ in columns.values()) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, metrics in results.items():
        cells = []
        for key, (_, fmt) in columns.items():
            value = metrics.get(key)
            cells.append("-" if value is None else fmt.format(value) if not isinstance(value, str)
                         else value)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
