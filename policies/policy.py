"""`TRCPolicy`: a trained TRC planner behind the shared policy face, and its checkpoints.

A checkpoint is one ``torch.save`` file holding only tensors and strings (loadable with
``weights_only=True``, so loading never runs code): the model's state dict and a JSON config
(env id and kwargs, model config, and free-form training metadata). Files are written to a
temp file in the same folder and renamed, so no half-written checkpoint is ever left behind.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from policies.model import TinyRecursiveControl, TRCConfig
from policies.training import atomic_torch_save
from trc_gym.compiled_rollout import (
    cache_dir,
    compile_package,
    compile_rollout,
    load_package,
    problem_key,
)
from trc_gym.devices import resolve_device
from trc_gym.envs import make_problem
from trc_gym.evaluation import feedback_path, run_episodes
from trc_gym.planning_policy import PlanningPolicy
from trc_gym.problem import LinearProblem, check_array

FORMAT = "trc-policy-v1"


class TRCPolicy(PlanningPolicy):
    """A TRC planner for one env: ``plan`` (batched numpy) and SB3-style ``predict``."""

    def __init__(self, model: TinyRecursiveControl, env_id: str, env_kwargs: dict | None = None,
                 receding_horizon: bool = False, metadata: dict | None = None):
        super().__init__(model.problem, env_id, env_kwargs, receding_horizon)
        self.model = model.eval()
        self.metadata = dict(metadata or {})
        self._trace: dict | None = None  # the traced graphs and their keys: _current_trace

    @classmethod
    def create(cls, env_id: str, size: str = "small", env_kwargs: dict | None = None,
               **overrides) -> TRCPolicy:
        """An untrained planner of a preset size for ``env_id``."""
        problem = make_problem(env_id, **(env_kwargs or {}))
        return cls(TinyRecursiveControl.from_preset(problem, size, **overrides), env_id,
                   env_kwargs, metadata={"size": size})

    def compile(self, float64: bool = False, planner: bool = True) -> bool:
        """Simulate plans with the problem's compiled step (`trc_gym.compiled_rollout`): the
        same plans, many times faster on nonlinear problems; compiled once per problem and
        cached on disk. ``float64``: the problem's float64 rollouts (costs of sampled plans,
        evaluation) too. ``planner``: also compile the whole planner as its weights are now,
        for batch-1 plans (`_compile_planner`). Returns whether anything compiled is in use
        (False where compiling is unavailable, or on a linear problem without ``planner``)."""
        if self.device.type != "cpu":  # compiled code is CPU code
            return False
        linear = isinstance(self.problem, LinearProblem) and not self.problem.has_failure_states
        dtypes = (torch.float32, torch.float64) if float64 else (torch.float32,)
        # A linear rollout is one product already: nothing to compile.
        rollouts = linear or all(compile_rollout(self.problem, dtype) is not None
                                 for dtype in dtypes)
        compiled_planner = planner and rollouts and self._compile_planner()
        return compiled_planner or (rollouts and not linear)

    def _compile_planner(self) -> bool:
        """Compile the traced planner at batch 1 with AOTInductor, its weights as constants
        (cached on disk, keyed by a hash of the weights, the model's config and source, and
        the problem's compiled step). A batch-1 plan then runs as one call of compiled code:
        about 2x faster than the frozen graph on the double integrator. Inductor's own
        kernels (matrix products, fused activations) round differently, so its plans equal
        the traced planner's to float32 rounding, not bit for bit: about 1e-7 relative, up to
        2e-5 on CartPole, whose instability amplifies rounding (the traced planner's own plans
        differ by more between batch sizes; tests check the larger of the two). It serves
        until a weight changes (then the traced graph does, until the next `compile`).
        Returns False, with a warning, where compiling fails."""
        inputs = self._example_inputs()
        trace = self._current_trace(*inputs)
        path = cache_dir() / f"TRCPlanner-{self._planner_key()}.pt2"
        try:
            if not path.exists():
                # A private copy: tracing must not leave fake tensors in the problem's cache.
                shadow = copy.deepcopy(self.model)
                shadow.problem._torch_constants = {}
                compile_package(_Iterates(shadow).eval(), inputs, path)
            trace["compiled"] = load_package(path)
        except Exception as exc:  # no compiler, an export limit: the traced graph serves
            warnings.warn(f"compiled planner unavailable ({type(exc).__name__}: {exc}); "
                          f"planning with the traced graph", stacklevel=3)
            return False
        return True

    def _planner_key(self) -> str:
        """A hash of what the compiled planner computes: weights, config, the source of the
        model and of this module, the problem's compiled rollouts (they name its step's source)
        and the torch version."""
        digest = hashlib.sha256()
        for name, value in self.model.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().contiguous().numpy().tobytes())
        digest.update(json.dumps(asdict(self.model.config), sort_keys=True).encode())
        for module in (inspect.getmodule(TinyRecursiveControl), inspect.getmodule(_Iterates)):
            digest.update(inspect.getsource(module).encode())
        rollouts = sorted(f.key for f in self.problem.fast_rollouts.values())
        digest.update(f"{problem_key(self.problem, torch.float32)};{rollouts};"
                      f"{torch.__version__}".encode())
        return digest.hexdigest()[:16]

    def _example_inputs(self) -> tuple[torch.Tensor, ...]:
        """A batch-1 input of the planner's graph: ``(x0, target)``, and ``steps_left`` for a
        planner that reads the time left."""
        n = self.problem.n_state
        steps = (torch.full((1,), self.problem.horizon),) if self.plans_time_left else ()
        return (torch.zeros(1, n), torch.zeros(1, n), *steps)

    @property
    def plans_time_left(self) -> bool:
        return self.model.config.time_left

    @property
    def device(self) -> torch.device:
        """Where the planner's weights live and its plans are computed."""
        return self.model.u_mid.device

    def to(self, device: str | torch.device) -> TRCPolicy:
        """Move the planner to ``device`` (see `trc_gym.devices.resolve_device`), in place;
        returns it. Compiled code is CPU code: off the CPU the planner runs its eager graph."""
        device = resolve_device(device)
        if device != self.device:
            self.model.to(device)
            self._trace = None
        return self

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def plan(self, x0: np.ndarray, target: np.ndarray,
             time_left: np.ndarray | None = None) -> np.ndarray:
        """Plans ``U [B, N, m]`` (float64, inside the bound) from ``x0, target [B, n]``; with
        ``time_left [B]`` (the observation's share of the horizon left; a planner with
        `plans_time_left` only) each plan is for the steps left, its first
        ``round(time_left N)`` controls."""
        plans = self._iterates(x0, target, time_left)[-1].double().cpu().numpy()
        bad = ~np.isfinite(plans).all(axis=(1, 2))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            x0_i = self.problem.check_states(x0, "x0")[i]
            raise ValueError(f"the planner's plan from x0[{i}] = {x0_i.tolist()} is not finite: "
                             f"the start is too far outside the state box it was made for "
                             f"({self.problem.state_low.tolist()} to "
                             f"{self.problem.state_high.tolist()}) for its float32 network")
        return plans

    def episode_costs(self, x0: np.ndarray, target: np.ndarray, mpc: bool = False) -> np.ndarray:
        """Cost ``[B]`` of the episodes from ``x0, target [B, n]``: of its plans run open loop
        (float64), or (``mpc``) replanning from every state, stepped as the env steps them."""
        if not mpc:
            return self.problem.cost(x0, target, self.plan(x0, target))
        replanning = TRCPolicy(self.model, self.env_id, self.env_kwargs, receding_horizon=True)
        return run_episodes(replanning, self.env_id, x0, target, self.env_kwargs,
                            feedback_path(self.env_id)).costs

    def iterates(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """Every refinement iterate's plans ``[B, N, m]``: the initial plan first, the final
        plan (what `plan` returns) last."""
        return [u.double().cpu().numpy() for u in self._iterates(x0, target)]

    def _iterates(self, x0: np.ndarray, target: np.ndarray,
                  time_left: np.ndarray | None = None) -> list[torch.Tensor]:
        device, N = self.device, self.problem.horizon
        x0 = torch.as_tensor(self.problem.check_states(x0, "x0"), dtype=torch.float32,
                             device=device)
        target = torch.as_tensor(self.problem.check_states(target, "target", batch=len(x0)),
                                 dtype=torch.float32, device=device)
        inputs = (x0, target)
        if time_left is not None:
            if not self.plans_time_left:
                raise ValueError("time_left: this planner does not read the time left "
                                 "(TRCConfig.time_left is off)")
            time_left = check_array(time_left, "time_left", (len(x0),))
            if not np.all((time_left > 0) & (time_left <= 1 + 1e-6)):
                raise ValueError(f"time_left must lie in (0, 1], got {time_left.tolist()}")
            steps = np.clip(np.rint(time_left * N), 1, N).astype(np.int64)
            inputs = (x0, target, torch.as_tensor(steps, device=device))
        elif self.plans_time_left:
            inputs = (x0, target, torch.full((len(x0),), N, device=device))
        if len(x0) == 0:
            empty = torch.zeros(0, N, self.problem.n_control)
            return [empty] * (self.model.config.n_refine + 1)
        if self.model.training:  # eval() walks every submodule: a cost at batch 1
            self.model.eval()
        if self.model.config.cost_gradient:  # differentiates its own simulation inside
            with torch.no_grad():
                return self.model(x0, target, steps_left=inputs[2] if len(inputs) > 2
                                  else None)["iterates"]
        with torch.inference_mode():  # no_grad without autograd's bookkeeping
            trace = self._current_trace(*inputs)
            if len(x0) == 1 and "compiled" in trace:
                return trace["compiled"](list(inputs))
            return list(trace["frozen"](*inputs))

    def _current_trace(self, *inputs: torch.Tensor) -> dict:
        """The eval model as a frozen TorchScript graph, ``["frozen"]`` (`torch.jit.trace`,
        then `torch.jit.freeze`, which makes the weights constants): the same operations and
        kernels, so the same plans bit for bit (tests check it), without the Python and
        module-call overhead that dominates a batch-1 plan; and ``["compiled"]``, the
        compiled planner, where `compile` made one for these weights. It is frozen again
        when a weight changes in place (its version counter moves: an optimizer step), and
        traced again when a parameter, buffer or submodule is replaced, or the problem's
        rollout changes; either drops the compiled planner. `torch.jit.trace` is deprecated;
        where it fails, the model runs as it is."""
        rollouts = tuple(self.problem.fast_rollouts)
        trace = self._trace
        if trace is not None and trace["rollouts"] == rollouts and all(
                slots[name] is value for slots, name, value in trace["bound"]):
            if trace["versions"] == tuple(t._version for t in trace["weights"]):
                return trace
            traced = trace["traced"]
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the deprecation and tracer notices
                    traced = torch.jit.trace(_Iterates(self.model).eval(), inputs,
                                             check_trace=False)
            except (AttributeError, RuntimeError):
                traced = None
        # Checking these are still the model's is cheaper than listing the model's weights.
        bound = [(slots, name, value) for module in self.model.modules()
                 for slots in (module._parameters, module._buffers, module._modules)
                 for name, value in slots.items() if value is not None]
        weights = [value for _, _, value in bound if isinstance(value, torch.Tensor)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice
            frozen = _Iterates(self.model) if traced is None else torch.jit.freeze(traced)
        self._trace = {"rollouts": rollouts, "bound": bound, "weights": weights,
                       "traced": traced, "versions": tuple(t._version for t in weights),
                       "frozen": frozen}
        return self._trace

    # ------------------------------------------------------------------ files
    def config_dict(self) -> dict:
        return {"format": FORMAT, "env_id": self.env_id, "env_kwargs": self.env_kwargs,
                "model": asdict(self.model.config), "metadata": self.metadata}

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically; returns its path."""
        payload = {"config": json.dumps(self.config_dict()),
                   "state_dict": self.model.state_dict()}
        return atomic_torch_save(payload, path)


class _Iterates(torch.nn.Module):
    """``model(x0, target[, steps_left])["iterates"]`` as a tuple, the output form a trace
    records."""

    def __init__(self, model: TinyRecursiveControl):
        super().__init__()
        self.model = model

    def forward(self, x0: torch.Tensor, target: torch.Tensor,
                *steps_left: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x0, target, steps_left=steps_left[0] if steps_left
                                else None)["iterates"])


def load_checkpoint(path: str | Path) -> dict:
    """Read a file written by `atomic_torch_save` with ``weights_only=True``; clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or not a torch "
                         f"file): {exc}") from exc
    if not isinstance(payload, dict) or "config" not in payload:
        raise ValueError(f"{path} is not a TRC checkpoint (no config)")
    return payload


def load_policy(path: str | Path, receding_horizon: bool = False,
                device: str | torch.device = "cpu") -> TRCPolicy:
    """Load a planner saved by `TRCPolicy.save` (on any device) onto ``device``."""
    device = resolve_device(device)
    payload = load_checkpoint(path)
    try:
        config = json.loads(payload["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has a corrupt config: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path} has format {found!r}, expected {FORMAT!r}")
    config.setdefault("metadata", {})
    for key, kind in (("env_id", str), ("env_kwargs", dict), ("model", dict),
                      ("metadata", dict)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"{path}: config[{key!r}] must be a {kind.__name__}, got "
                             f"{config.get(key)!r}")
    problem = make_problem(config["env_id"], **config["env_kwargs"])
    model = TinyRecursiveControl(problem, TRCConfig.from_dict(config["model"], f"{path}: model"))
    state_dict = payload.get("state_dict")
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: weights do not match the config: {exc}") from exc
    bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: weights contain NaN or inf (in {bad[:3]})")
    return TRCPolicy(model, config["env_id"], config["env_kwargs"], receding_horizon,
                     config["metadata"]).to(device)
