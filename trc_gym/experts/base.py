"""`Expert`: the solver an env names for its problem (``ControlEnv.expert_class``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from trc_gym.devices import resolve_device
from trc_gym.problem import ControlProblem


class Expert:
    """An optimal-control solver for one problem: ``plan(x0, target) -> U [B, N, m]``.

    Subclasses implement `solve` on checked float64 inputs. ``parallel`` tells
    `trc_gym.datasets.generate` to spread the solves over processes (slow, per-start work)
    rather than run them batched in one process.
    """

    parallel: ClassVar[bool] = False

    def __init__(self, problem: ControlProblem):
        self.problem = problem
        # Where a solver's torch parts run (`to`); the numpy parts stay on the CPU.
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> Expert:
        """Run the solver's torch parts on ``device`` (`trc_gym.devices.resolve_device`);
        returns the expert. Plans still come back as float64 numpy arrays."""
        self.device = resolve_device(device)
        return self

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The expert's plans ``U [B, N, m]`` from ``x0 [B, n]`` to ``target [B, n]`` (or one
        ``[n]`` target for every start)."""
        p = self.problem
        x0 = p.check_states(x0, "x0")
        target = p.check_states(target, "target", batch=x0.shape[0])
        if len(x0) == 0:
            return np.zeros((0, p.horizon, p.n_control))
        plans = self.solve(x0, target)
        bad = ~np.isfinite(plans).all(axis=(1, 2))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{type(self).__name__} found no finite plan from x0[{i}] = "
                             f"{x0[i].tolist()} (to {target[i].tolist()}): the start is beyond "
                             f"what the problem's float64 dynamics and cost can represent")
        return plans

    def plan_and_gains(self, x0: np.ndarray,
                       target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`plan`, with the time-varying feedback gains ``K [B, N, m, n]`` that track it: a
        controller that applies ``u_k + K_k (x_k - xbar_k)`` (clipped into the bound) on the
        planned trajectory ``xbar`` corrects small deviations from it, such as the rounding of
        float32 actions and observations, which an unstable system amplifies open loop. None
        (the default): the plan is executed as it is."""
        return self.plan(x0, target), None

    def solve(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} implements no solver")
