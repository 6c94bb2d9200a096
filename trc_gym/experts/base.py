"""`Expert`: the solver an env names for its problem (``ControlEnv.expert_class``)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from typing import ClassVar

import numpy as np
import torch

from trc_gym.checks import check_number
from trc_gym.devices import resolve_device
from trc_gym.problem import ControlProblem

CHUNK_SIZE = 256  # starts per expert call of `Expert.plan_in_chunks`


class Expert:
    """An optimal-control solver for one problem: ``plan(x0, target) -> U [B, N, m]``.

    Subclasses implement `solve` on checked float64 inputs, and `gains` where they track
    their plans with feedback. ``parallel`` marks a solver whose work is per start (slow):
    `plan_in_chunks` spreads its chunks over processes rather than running them batched in
    one.
    """

    parallel: ClassVar[bool] = False

    def __init__(self, problem: ControlProblem):
        self.problem = problem
        # Where a solver's torch parts run (`to`); the numpy parts stay on the CPU.
        self.device = torch.device("cpu")
        self.margin = 0.0  # clearance kept from hard state constraints (`with_margin`)

    @property
    def keeps_margins(self) -> bool:
        """Whether `with_margin` applies: the solver plans around hard state constraints."""
        return False

    def with_margin(self, margin: float) -> Expert:
        """Plan to keep a clearance of at least ``margin`` (the constraint's unit, e.g. metres
        from each obstacle's edge) from every hard state constraint; returns the expert. The
        optimal plans graze the constraints they are bound by, so a planner cloning them
        touches one at the smallest error; plans kept clear cost a little more and leave room
        for those errors. ValueError where the problem has no hard state constraints."""
        check_number(margin, "margin", minimum=0)
        if margin > 0 and not self.keeps_margins:
            raise ValueError(f"margin must be 0 for {type(self).__name__}: its problem has no "
                             f"hard state constraints to keep a margin from (got {margin})")
        self.margin = float(margin)
        return self

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

    def plan_in_chunks(self, x0: np.ndarray, target: np.ndarray, workers: int = 1,
                       chunk_size: int = CHUNK_SIZE,
                       on_chunk: Callable[[int], object] | None = None) -> np.ndarray:
        """`plan`, ``chunk_size`` starts per call (the same calls whatever ``workers``, so the
        same plans); a `parallel` expert on the CPU solves the chunks in ``workers`` processes
        when there is more than one. ``on_chunk(starts)`` is called as each chunk is done (a
        progress bar's ``update``)."""
        x0 = self.problem.check_states(x0, "x0")
        target = self.problem.check_states(target, "target", batch=x0.shape[0])
        chunks = [(x0[i:i + chunk_size], target[i:i + chunk_size])
                  for i in range(0, len(x0), chunk_size)]
        if not chunks:
            return self.plan(x0, target)
        in_processes = (self.parallel and self.device.type == "cpu" and workers > 1
                        and len(chunks) > 1)
        plans = []
        with (ProcessPoolExecutor(min(workers, len(chunks))) if in_processes
              else nullcontext()) as pool:
            solved = (pool.map if in_processes else map)(self.plan, *zip(*chunks))
            for (chunk, _), plan in zip(chunks, solved):
                plans.append(plan)
                if on_chunk is not None:
                    on_chunk(len(chunk))
        return np.concatenate(plans)

    def gains(self, x0: np.ndarray, target: np.ndarray,
              plans: np.ndarray) -> np.ndarray | None:
        """The time-varying feedback gains ``K [B, N, m, n]`` that track ``plans [B, N, m]``
        (this expert's, from ``x0`` to ``target [B, n]``): a controller that applies
        ``u_k + K_k (x_k - xbar_k)`` (clipped into the bound) on the planned trajectory
        ``xbar`` corrects small deviations from it, such as the rounding of float32 actions
        and observations, which an unstable system amplifies open loop. None (the default):
        the plans are executed as they are."""
        return None

    def plan_and_gains(self, x0: np.ndarray,
                       target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`plan` and its `gains`."""
        plans = self.plan(x0, target)
        return plans, self.gains(x0, target, plans)

    def solve(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} implements no solver")
