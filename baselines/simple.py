"""Reference policies with the same face as every other: the expert, random and zero controls."""

from __future__ import annotations

import os

import numpy as np

from trc_gym.checks import check_number
from trc_gym.envs import make_expert, make_problem
from trc_gym.experts import Expert
from trc_gym.planning_policy import PlanningPolicy


class ExpertPolicy(PlanningPolicy):
    """The env's expert (exact QP / iLQR) as a policy: ``plan`` solves, spread over
    ``workers`` processes (default: every core) where the expert is slow per start;
    ``predict`` executes the plan tracked with the expert's feedback gains where it has them
    (iLQR), or open loop with ``open_loop=True`` (what an open-loop planner faces: float32
    actions and observations alone make swing-up plans miss)."""

    def __init__(self, env_id: str, receding_horizon: bool = False, open_loop: bool = False,
                 workers: int | None = None, **env_kwargs):
        self.expert = make_expert(env_id, **env_kwargs)
        self.open_loop = open_loop
        if workers is not None:
            check_number(workers, "workers", minimum=1, integer=True)
        self.workers = workers or os.cpu_count() or 1
        super().__init__(self.expert.problem, env_id, env_kwargs, receding_horizon)

    @property
    def feedback(self) -> bool:
        has_gains = type(self.expert).gains is not Expert.gains
        return has_gains and not (self.open_loop or self.receding_horizon)

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        return self.expert.plan_in_chunks(x0, target, self.workers)

    def plan_and_gains(self, x0: np.ndarray,
                       target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        plans = self.expert.plan_in_chunks(x0, target, self.workers)
        return plans, None if self.open_loop else self.expert.gains(x0, target, plans)


class RandomPolicy(PlanningPolicy):
    """Controls drawn uniformly within the bound (seeded)."""

    def __init__(self, env_id: str, seed: int = 0, **env_kwargs):
        super().__init__(make_problem(env_id, **env_kwargs), env_id, env_kwargs)
        self.rng = np.random.default_rng(seed)

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        p = self.problem
        return self.rng.uniform(p.u_low, p.u_high, size=(len(x0), p.horizon, p.n_control))


class ZeroPolicy(PlanningPolicy):
    """No control at all: the plan is all zeros (clipped into the bound if zero is outside)."""

    def __init__(self, env_id: str, **env_kwargs):
        super().__init__(make_problem(env_id, **env_kwargs), env_id, env_kwargs)

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        p = self.problem
        zero = np.clip(np.zeros(p.n_control), p.u_low, p.u_high)
        return np.broadcast_to(zero, (len(x0), p.horizon, p.n_control)).copy()
