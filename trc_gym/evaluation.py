"""The one evaluation harness: every policy is judged here, on the same held-out starts, by the
same numbers, and every table is printed from the one registry of metrics below.

Three ways to run episodes, which give the same controls, states and costs (tests pin it):

- **plan**: anything with ``plan(x0, target) -> U`` that executes one plan per episode, open
  loop, is rolled out batched through the problem (`run_plans`), planned from the start as its
  float32 observation gives it and with its controls rounded to the action space's float32, as
  stepping the env hands them over;
- **step**: anything with SB3's ``predict`` is stepped through ``gym.make(env_id)``, one env per
  episode, every episode's observation handed to ``predict`` as one batch per time step
  (`step_episodes`): what a user does;
- **batched**: the same feedback loop through the problem's batched step, far faster, for
  envs that use `ControlEnv`'s own step and observation (`run_feedback`): what model selection
  during training uses.

Seeds: test starts use `HELD_OUT_SEED`, validation (model selection) `VALIDATION_SEED`, and
datasets default to seed 0, so the three sets are disjoint.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from trc_gym.checks import check_number
from trc_gym.envs import env_class, make_expert, make_problem
from trc_gym.envs.base import ACTION_DTYPE, ControlEnv, observation_parts, observations
from trc_gym.problem import ControlProblem
from trc_gym.threads import one_thread

HELD_OUT_SEED = 12345  # test starts: every reported table
VALIDATION_SEED = 54321  # validation starts: model selection (never the test starts)
DEFAULT_EPISODES = 1000  # held-out starts of every reported table
EpisodePath = Literal["auto", "plan", "step", "batched"]
_expert_cache: dict[tuple, np.ndarray] = {}


# ------------------------------------------------------------------------------ starts
def held_out_starts(env_id: str, n: int, seed: int = HELD_OUT_SEED,
                    env_kwargs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x0 [n, n_state], target [n, n_state])`` drawn from the env's start distribution
    with ``seed`` (starts first, then targets, from one generator)."""
    problem = make_problem(env_id, **(env_kwargs or {}))
    rng = np.random.default_rng(seed)
    return problem.sample_initial_states(rng, n), problem.sample_targets(rng, n)


def expert_costs(env_id: str, n: int, seed: int = HELD_OUT_SEED,
                 env_kwargs: dict | None = None) -> np.ndarray:
    """The expert's cost ``[n]`` on the starts of `held_out_starts` (computed once per
    process, on every core where the expert is slow per start)."""
    key = (env_id, n, seed, tuple(sorted((env_kwargs or {}).items())))
    if key not in _expert_cache:
        expert = make_expert(env_id, **(env_kwargs or {}))
        x0, target = held_out_starts(env_id, n, seed, env_kwargs)
        plans = expert.plan_in_chunks(x0, target, workers=os.cpu_count() or 1)
        _expert_cache[key] = expert.problem.cost(x0, target, plans)
    return _expert_cache[key]


def gap(mean_cost: float, expert_cost: float) -> float:
    """The gap to the expert, ``J / J* - 1``: a ratio of mean costs over the same starts."""
    return float(mean_cost) / float(expert_cost) - 1.0


# ---------------------------------------------------------------------------- episodes
@dataclass
class Episodes:
    """Episodes as run: controls as issued ``[B, N, m]``, states ``[B, N+1, n]`` (a failed
    episode's last state repeated to the end) and total costs ``[B]``."""

    controls: np.ndarray
    states: np.ndarray
    costs: np.ndarray


def check_policy(policy: Any, env_id: str, env_kwargs: dict | None = None) -> None:
    """``policy`` must act (``plan`` or ``predict``) and, where it records the env it was made
    for (``env_id``, ``env_kwargs``), be for this one: a planner or agent of one env evaluated
    on another would report numbers that mean nothing."""
    if not (callable(getattr(policy, "plan", None)) or callable(getattr(policy, "predict", None))):
        raise ValueError(f"policy must have plan(x0, target) or SB3's predict(obs), got "
                         f"{type(policy).__name__}")
    own = getattr(policy, "env_id", None)
    if own is not None and own != env_id:
        raise ValueError(f"the policy is for {own!r}, not {env_id!r}")
    own_kwargs = getattr(policy, "env_kwargs", None)
    if own is not None and own_kwargs is not None and dict(own_kwargs) != dict(env_kwargs or {}):
        raise ValueError(f"the policy is for {env_id} with options {dict(own_kwargs)}, not "
                         f"{dict(env_kwargs or {})}")


def acts_by_plan(policy: Any) -> bool:
    """Whether ``policy`` acts by executing one plan per episode open loop (evaluated batched
    through the problem's rollout) rather than through ``predict`` (a receding-horizon planner
    replans at every step and a tracking one corrects its plan with feedback gains, so they
    are stepped like any feedback policy)."""
    return (hasattr(policy, "plan") and not getattr(policy, "receding_horizon", False)
            and not getattr(policy, "feedback", False))


def run_plans(policy: Any, problem: ControlProblem, x0: np.ndarray,
              target: np.ndarray) -> Episodes:
    """One plan per episode, rolled out through the problem (the env's states and cost): the
    plan made from what the env's first observation shows (float32 ``x0`` and ``target``), its
    controls rounded to the action space's dtype, as ``predict`` through ``gym.make`` runs it.
    An unstable system amplifies that rounding: a float64 rollout of a float64 plan would judge
    an open-loop planner more kindly than a user stepping the env finds it."""
    seen_x0, seen_target, _ = observation_parts(observations(problem, x0, target, 0),
                                                problem.n_state)
    plans = np.asarray(policy.plan(seen_x0, seen_target))
    controls = plans.astype(ACTION_DTYPE).astype(np.float64)
    return Episodes(controls, problem.rollout(x0, controls), problem.cost(x0, target, controls))


def step_episodes(policy: Any, env_id: str, x0: np.ndarray, target: np.ndarray,
                  env_kwargs: dict | None = None,
                  batch: int | None = None) -> tuple[Episodes, float]:
    """Run each episode through its own ``gym.make(env_id)`` with ``policy.predict``, in
    lockstep groups of ``batch`` episodes (default: all at once), so the policy acts on a batch
    of observations per time step. An episode that ends early (a failure) is padded as the
    batched rollout pads it: its last state repeated, with zero controls (clipped into the
    bound) that are never applied. Returns the episodes and the seconds spent in ``predict``."""
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
    return Episodes(controls, states, costs), seconds


def steps_like_control_env(env_id: str) -> bool:
    """Whether the env's step and observation are `ControlEnv`'s own (so an episode is exactly
    the problem's batched step of the issued controls)."""
    cls = env_class(env_id)
    return all(getattr(cls, name) is getattr(ControlEnv, name)
               for name in ("step", "reset", "_observation"))


def feedback_path(env_id: str) -> EpisodePath:
    """The fastest path that steps a feedback policy's episodes exactly as the env does:
    ``"batched"`` where the env steps like `ControlEnv` (`steps_like_control_env`), else
    ``"step"``."""
    return "batched" if steps_like_control_env(env_id) else "step"


def run_feedback(policy: Any, env_id: str, x0: np.ndarray, target: np.ndarray,
                 env_kwargs: dict | None = None) -> Episodes:
    """`step_episodes` without the envs: all episodes at once through the problem's batched
    step, with the env's observations, clipping, early termination on failure and padding.
    Only for envs whose step is `ControlEnv`'s (`steps_like_control_env`)."""
    if not steps_like_control_env(env_id):
        raise ValueError(f"{env_id} overrides ControlEnv's step: step it with step_episodes")
    problem = make_problem(env_id, **(env_kwargs or {}))
    batch = len(x0)
    resting = np.clip(np.zeros(problem.n_control), problem.u_low, problem.u_high)
    x, dead, controls = x0, np.zeros(batch, dtype=bool), []
    for k in range(problem.horizon):
        action, _ = policy.predict(observations(problem, x, target, k),
                                   episode_start=np.full(batch, k == 0), deterministic=True)
        u = np.asarray(action, dtype=np.float64).reshape(batch, problem.n_control)
        u[dead] = resting
        controls.append(u)
        x = np.where(dead[:, None], x, problem.step(x, u))
        dead |= problem.failed(x, k + 1)
    controls = np.stack(controls, axis=1)
    return Episodes(controls, problem.rollout(x0, controls), problem.cost(x0, target, controls))


def run_episodes(policy: Any, env_id: str, x0: np.ndarray, target: np.ndarray,
                 env_kwargs: dict | None = None, path: EpisodePath = "auto") -> Episodes:
    """Episodes of ``policy`` from ``x0, target [B, n]`` by ``path`` (see the module
    docstring; ``"auto"``: plan where the policy acts by plan, else step)."""
    if path == "auto":
        path = "plan" if acts_by_plan(policy) else "step"
    if path == "plan":
        return run_plans(policy, make_problem(env_id, **(env_kwargs or {})), x0, target)
    if path == "step":
        return step_episodes(policy, env_id, x0, target, env_kwargs)[0]
    if path == "batched":
        return run_feedback(policy, env_id, x0, target, env_kwargs)
    raise ValueError(f"path must be 'auto', 'plan', 'step' or 'batched', got {path!r}")


# ----------------------------------------------------------------------------- metrics
def trajectory_metrics(problem: ControlProblem, target: np.ndarray,
                       episodes: Episodes) -> dict[str, float]:
    """Metrics of ``episodes`` towards ``target [B, n]``: mean cost, terminal error (total and
    per state group), effort, success rate and violations."""
    controls, states, costs = episodes.controls, episodes.states, episodes.costs
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
    for name, values in problem.episode_measures(states).items():
        metrics[name] = float(np.mean(values))
    return metrics


def evaluate(policy: Any, env_id: str, n_episodes: int = DEFAULT_EPISODES,
             seed: int = HELD_OUT_SEED, *,
             env_kwargs: dict | None = None, path: EpisodePath = "auto",
             latency_samples: int = 20, latency_seconds: float = 20.0) -> dict[str, float]:
    """Evaluate ``policy`` on ``n_episodes`` starts of ``env_id`` drawn with ``seed``.

    Returns the metrics of `trajectory_metrics`, the expert's mean cost on the same starts and
    the `gap`, and, with ``latency_samples > 0``, ``ms_per_plan``: the batch-1 wall time to
    control one episode (a plan policy: the median time of one plan; a stepped policy: its N
    ``predict`` calls, stepping the first ``latency_samples`` episodes one at a time, and
    ``ms_per_action``, their mean), and ``step_dt``: the time a control step waits for the
    policy, as a fraction of the env's dt (a plan policy: its one plan, made before the first
    step; a stepped policy: its mean ``predict`` call, which for MPC is one plan). The timing
    stops early once it has taken ``latency_seconds`` (after at least one episode or plan): a
    slow expert's batch-1 episodes take seconds each, and their mean is as clear from a few.
    """
    check_number(n_episodes, "n_episodes", minimum=1, integer=True)
    check_number(seed, "seed", minimum=0, integer=True)
    check_number(latency_samples, "latency_samples", minimum=0, integer=True)
    check_number(latency_seconds, "latency_seconds", minimum=0.0)
    problem = make_problem(env_id, **(env_kwargs or {}))
    check_policy(policy, env_id, env_kwargs)
    x0, target = held_out_starts(env_id, n_episodes, seed, env_kwargs)
    if path == "auto":
        path = "plan" if acts_by_plan(policy) else "step"
    latency: dict[str, float] = {}
    if path == "step":
        episodes = step_episodes(policy, env_id, x0, target, env_kwargs)[0]
        if latency_samples > 0:
            timed, seconds, start = 0, 0.0, time.perf_counter()
            while timed < min(latency_samples, n_episodes) and (
                    timed == 0 or time.perf_counter() - start < latency_seconds):
                one = slice(timed, timed + 1)  # one episode at a time, as one robot
                seconds += step_episodes(policy, env_id, x0[one], target[one], env_kwargs)[1]
                timed += 1
            latency["ms_per_plan"] = 1000.0 * seconds / timed
            latency["ms_per_action"] = latency["ms_per_plan"] / problem.horizon
            latency["step_dt"] = latency["ms_per_action"] / (1000.0 * problem.dt)
    else:
        episodes = run_episodes(policy, env_id, x0, target, env_kwargs, path)
        if path == "plan" and latency_samples > 0:
            latency["ms_per_plan"] = plan_latency_ms(policy, x0[:latency_samples],
                                                     target[:latency_samples], latency_seconds)
            latency["step_dt"] = latency["ms_per_plan"] / (1000.0 * problem.dt)
    metrics = trajectory_metrics(problem, target, episodes)
    metrics["expert_cost"] = float(expert_costs(env_id, n_episodes, seed, env_kwargs).mean())
    metrics["gap"] = gap(metrics["mean_cost"], metrics["expert_cost"])
    metrics.update(latency)
    metrics["n_episodes"] = n_episodes
    return metrics


# ----------------------------------------------------------------------------- latency
def plan_latency_ms(policy: Any, x0: np.ndarray, target: np.ndarray,
                    seconds: float = math.inf) -> float:
    """Median wall time of ``policy.plan`` on one start (batch 1), in ms, on one thread (a
    planner serves one robot; threads only add overhead at batch 1), after one warm-up call;
    the starts of ``x0`` in turn, until the timed plans have taken ``seconds``."""
    return plan_latencies_ms({"policy": policy}, x0, target, seconds=seconds)["policy"]


def plan_latencies_ms(policies: dict[str, Any], x0: np.ndarray, target: np.ndarray,
                      block: int = 10, seconds: float = math.inf) -> dict[str, float]:
    """`plan_latency_ms` of several policies, timed in turn on blocks of ``block`` starts, so
    that a machine whose speed drifts (shared cores, throttling) slows them alike and their
    ratios hold (blocks rather than single starts keep each policy's caches warm, as one
    policy's calls in a row are). The timing stops at the end of the block during which the
    timed plans pass ``seconds`` in all."""
    times: dict[str, list[float]] = {name: [] for name in policies}
    with one_thread():
        for policy in policies.values():
            policy.plan(x0[:1], target[:1])
        for first in range(0, len(x0), block):
            if sum(map(sum, times.values())) >= seconds:
                break
            for name, policy in policies.items():
                for i in range(first, min(first + block, len(x0))):
                    start = time.perf_counter()
                    policy.plan(x0[i:i + 1], target[i:i + 1])
                    times[name].append(time.perf_counter() - start)
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


# ------------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class Metric:
    """How a metric is shown: its column header (with its unit) and format."""

    header: str
    fmt: str

    def format(self, value: Any) -> str:
        if value is None:
            return "-"
        return value if isinstance(value, str) else self.fmt.format(value)


METRICS: dict[str, Metric] = {
    "mean_cost": Metric("mean cost", "{:.3f}"),
    "expert_cost": Metric("expert cost", "{:.3f}"),
    "gap": Metric("gap to expert", "{:+.3%}"),
    "success_rate": Metric("success", "{:.1%}"),
    "open_loop_success": Metric("success open loop", "{:.1%}"),
    "terminal_error": Metric("terminal error", "{:.4f}"),
    "effort": Metric("effort", "{:.3f}"),
    "violations": Metric("violations", "{:.1%}"),
    "fuel_used": Metric("fuel (kg)", "{:.1f}"),
    # One plan (planners) or N predict calls (MPC, SB3) at batch 1.
    "ms_per_plan": Metric("ms/episode", "{:.2f}"),
    "ms_per_action": Metric("ms/action", "{:.3f}"),
    "step_dt": Metric("batch-1 step / dt", "{:.1%}"),
    "ms_per_plan_batched": Metric("ms/plan (batch 1024)", "{:.4f}"),
    "ms_per_plan_all": Metric("ms/plan (all starts in one batch)", "{:.1f}"),
    # An expert's plan cost over an independent reference's (examples/expert_quality.py).
    "excess_mean": Metric("excess over reference: mean", "{:+.3%}"),
    "excess_p95": Metric("p95", "{:+.3%}"),
    "excess_max": Metric("worst", "{:+.3%}"),
    "reference_s_per_plan": Metric("reference s/plan", "{:.2f}"),
    "vs_expert": Metric("x expert (batch 1)", "{:.2f}"),
    "parameters": Metric("parameters", "{:,}"),
    "expert_solves": Metric("expert solves", "{:,}"),
    "env_steps": Metric("env steps", "{:,}"),
    "validation_env_steps": Metric("validation env steps", "{:,}"),
    "train_seconds": Metric("training wall (s)", "{:,.0f}"),
    "epochs": Metric("epochs", "{}"),
    # Simulation speed (examples/benchmark_speed.py): eager against compiled rollouts.
    "ms_per_plan_eager": Metric("ms/plan eager (batch 1)", "{:.2f}"),
    "ms_per_plan_compiled": Metric("ms/plan compiled (batch 1)", "{:.2f}"),
    "speedup": Metric("x faster", "{:.1f}"),
    "mpc_step_dt": Metric("MPC step / dt", "{:.1%}"),
    "expert_ms_per_plan": Metric("expert ms/plan (batch 1)", "{:,.1f}"),
    "vs_expert_compiled": Metric("x faster than the expert", "{:,.0f}"),
    "bc_step_ms_eager": Metric("cloning step ms eager", "{:.0f}"),
    "bc_step_ms": Metric("cloning step ms", "{:.0f}"),
    "bc_cost_step_ms_eager": Metric("with cost term, eager", "{:.0f}"),
    "bc_cost_step_ms": Metric("with cost term", "{:.0f}"),
    "grpo_steps_per_s_eager": Metric("GRPO steps/s eager", "{:,.0f}"),
    "grpo_steps_per_s": Metric("GRPO steps/s", "{:,.0f}"),
    # Baseline tuning: over the seeds of one candidate.
    "val_gap": Metric("mean validation gap", "{:+.3%}"),
    "worst_val_gap": Metric("worst validation gap", "{:+.3%}"),
    "runs": Metric("runs", "{}"),
    "selected_at_env_steps": Metric("selected at (env steps)", "{}"),
    "seconds_per_run": Metric("s/run", "{:.0f}"),
}
DEFAULT_COLUMNS = ("mean_cost", "gap", "success_rate", "terminal_error", "effort", "ms_per_plan")
MEASURE_COLUMNS = ("fuel_used",)  # problems' `episode_measures`: shown where present


def with_measures(columns: tuple[str, ...],
                  results: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """``columns`` and, after them, every `MEASURE_COLUMNS` entry that some result has."""
    return (*columns, *(k for k in MEASURE_COLUMNS
                        if k not in columns and any(k in m for m in results.values())))


def metric(key: str) -> Metric:
    """The `Metric` of ``key``: a registered key, ``terminal_error_<group>`` or
    ``iterate_<k>`` (the mean cost of refinement iterate k)."""
    if key in METRICS:
        return METRICS[key]
    if key.startswith("terminal_error_"):
        return Metric(key.removeprefix("terminal_error_") + " error", "{:.4f}")
    if key.startswith("iterate_"):
        return Metric("iterate " + key.removeprefix("iterate_"), "{:.3f}")
    raise ValueError(f"unknown metric {key!r}; registered: {sorted(METRICS)}")


def format_table(results: dict[str, dict[str, Any]], columns: tuple[str, ...] | None = None,
                 first: str = "policy") -> str:
    """A markdown table with one row per entry (``results[name] = metrics``); ``columns`` are
    metric keys (default: `DEFAULT_COLUMNS`, every per-group terminal error and every
    `MEASURE_COLUMNS` entry present). A missing value prints '-'."""
    if columns is None:
        groups = sorted({k for m in results.values() for k in m
                         if k.startswith("terminal_error_")})
        columns = with_measures((*DEFAULT_COLUMNS, *groups), results)
    lines = [f"| {first} | " + " | ".join(metric(k).header for k in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, values in results.items():
        cells = [metric(k).format(values.get(k)) for k in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
