"""DAgger for a replanning planner: label the states its own MPC episodes reach with the expert,
and clone on.

Cloning fits the expert's plans from the states the expert's trajectories pass through. A
replanning clone drifts from them, and where the dynamics are unstable a small drift takes it
to states no demonstration came near: on CartPole a near-upright start overshoots, the pole
falls, and the clone, never shown a falling pole, spins it for the rest of the episode. Each
round here runs the planner's MPC episodes from fresh starts of the start box, draws states
along them (half from the episodes that failed, where the clone most needs a label), solves the
expert's plan from each, adds them to the demonstrations and clones on from the current
weights (Ross, Gordon and Bagnell 2011, with the expert as the only labeller).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from policies.bc import BCConfig, train_bc
from policies.policy import TRCPolicy
from trc_gym import make_expert
from trc_gym.checks import check_number
from trc_gym.datasets import Demonstrations
from trc_gym.evaluation import feedback_path, run_episodes


@dataclass
class DAggerConfig:
    """Rounds of expert labels on the states the cloned planner's MPC episodes reach."""

    rounds: int = 0
    """Rounds of labelling and cloning on (0: none)."""
    episodes: int = 2000
    """MPC episodes per round, from starts drawn from the start box (their own seed)."""
    labels: int = 3000
    """States per round labelled with the expert's plan."""
    failed_share: float = 0.5
    """Share of the labels drawn (with replacement) from the episodes that failed; none where
    none failed."""
    epochs: int = 60
    """Cloning epochs per round, from the current weights."""
    lr: float = 5e-4
    """Peak learning rate of each round's cloning."""
    workers: int | None = None
    """Processes of a slow expert's solves (default: every core)."""

    def __post_init__(self) -> None:
        check_number(self.rounds, "DAggerConfig.rounds", minimum=0, integer=True)
        for key in ("episodes", "labels", "epochs"):
            check_number(getattr(self, key), f"DAggerConfig.{key}", minimum=1, integer=True)
        check_number(self.failed_share, "DAggerConfig.failed_share", minimum=0, maximum=1)
        check_number(self.lr, "DAggerConfig.lr", minimum=0, exclusive_minimum=True)
        if self.workers is not None:
            check_number(self.workers, "DAggerConfig.workers", minimum=1, integer=True)


def visited_states(alive: np.ndarray, failed: np.ndarray, n: int, failed_share: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` (episode, step) pairs among the steps ``1..N-1`` of episodes whose
    ``alive [B, N]`` (`ControlProblem.alive_mask`: no failure before the step) is set, a share
    ``failed_share`` of them from the episodes marked ``failed [B]`` (none if none failed).
    Step 0 is each episode's start, which the data came from. Returns ``(rows, steps)``,
    ``[n]`` each."""
    alive = alive.copy()
    alive[:, 0] = False
    usable = alive.any(axis=1)
    pools = (np.flatnonzero(usable & failed), np.flatnonzero(usable))
    n_failed = round(failed_share * n) if len(pools[0]) else 0
    rows = np.concatenate([rng.choice(pools[0], n_failed), rng.choice(pools[1], n - n_failed)])
    steps = np.array([rng.choice(np.flatnonzero(alive[row])) for row in rows], dtype=int)
    return rows.astype(int), steps


def dagger(policy: TRCPolicy, data: Demonstrations, config: DAggerConfig,
           bc_config: BCConfig, seed: int = 0, run_dir: str | Path | None = None,
           progress: bool = True) -> tuple[Demonstrations, list[dict]]:
    """Run ``config.rounds`` rounds on ``policy`` (in place; it ends with the last round's best
    weights). Returns the demonstrations with every round's labels added, and one record per
    round (failed episodes, labels, the cloning history)."""
    env_id, env_kwargs = policy.env_id, policy.env_kwargs
    problem = policy.problem
    if policy.plans_time_left and config.rounds:
        raise ValueError("DAgger labels states with the expert's full-horizon plans; a planner "
                         "that reads the time left (TRCConfig.time_left) needs plans for the "
                         "steps left")
    # Labelled as the demonstrations were: with their clearance from hard constraints.
    expert = make_expert(env_id, **env_kwargs).with_margin(data.metadata.get("margin", 0.0))
    replanning = TRCPolicy(policy.model, env_id, env_kwargs, receding_horizon=True)
    records = []
    for round_ in range(config.rounds):
        rng = np.random.default_rng([seed, round_])
        x0 = problem.sample_initial_states(rng, config.episodes)
        target = problem.sample_targets(rng, config.episodes)
        episodes = run_episodes(replanning, env_id, x0, target, env_kwargs,
                                feedback_path(env_id))
        failed = ~problem.success(episodes.states, target)
        rows, steps = visited_states(problem.alive_mask(episodes.states), failed, config.labels,
                                     config.failed_share, rng)
        start, goal = episodes.states[rows, steps], target[rows]
        controls = expert.plan_in_chunks(start, goal,
                                         workers=config.workers or os.cpu_count() or 1)
        data = data + Demonstrations.of_plans(problem, start, goal, controls, data.metadata)
        history = train_bc(policy, data, replace(bc_config, epochs=config.epochs, lr=config.lr),
                           run_dir=Path(run_dir) / f"round_{round_ + 1}" if run_dir else None,
                           progress=progress)
        records.append({"round": round_ + 1, "failed_episodes": int(failed.sum()),
                        "episodes": config.episodes, "labels": config.labels,
                        "best_val_gap": min(row["val_gap"] for row in history),
                        "history": history})
    policy.metadata["dagger"] = [{k: v for k, v in r.items() if k != "history"}
                                 for r in records]
    return data, records
