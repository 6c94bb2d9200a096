"""Compiled rollouts: a problem's own torch step, compiled ahead of time, for fast planning.

A rollout of a nonlinear problem is N steps of a few dozen tiny torch operations each, so in
eager torch the per-operation overhead sets its speed (about 30 ms for 100 RK4 steps at batch
1). Here the problem's `step_torch` (the same code, not a second copy of the equations) is
exported for ``chunk`` steps at a time (`torch.export`, batch size free) and compiled by
AOTInductor into a shared library, whose call costs microseconds; a rollout is N / chunk such
calls. The states are the eager rollout's bit for bit on CPU (tests check every env), but for
Rocket's batched build, whose thrust norm may differ in the last bits (relative 1e-7 to 1e-6).

- Compiling takes 35 to 65 s per problem and dtype; the packages are cached on disk
  (``TRC_CACHE_DIR``, default ``~/.cache/trc_gym``), keyed by the problem's source, parameters
  and torch version, so later processes load them in well under a second.
- It needs a C++ compiler; where compiling fails, `compile_rollout` warns once and returns
  None, and the problem keeps its eager rollout (the reference).
- Failure states (a crash, a collision) are applied after the smooth rollout: a trajectory is
  frozen at its first failing state, exactly as the stepped rollout freezes it.
- Gradients flow through it (fine-tuning's exact gradient, cloning's cost term): the backward
  pass recomputes each chunk in eager torch from its saved start and backpropagates through
  it, last chunk first (the adjoint of the rollout).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trc_gym.problem import ControlProblem

CHUNK = 10  # steps per compiled call: longer chunks compile superlinearly longer
_ROLLOUTS: dict[str, CompiledRollout] = {}  # by key, for the custom op below


def cache_dir() -> Path:
    return Path(os.environ.get("TRC_CACHE_DIR", Path.home() / ".cache" / "trc_gym"))


class _Chunk(torch.nn.Module):
    """``chunk`` steps of ``problem.step_torch``: ``x [B, n], U [B, chunk, m] -> [B, chunk, n]``."""

    def __init__(self, problem: ControlProblem, chunk: int):
        super().__init__()
        self.problem, self.chunk = problem, chunk

    def forward(self, x: Tensor, U: Tensor) -> Tensor:
        states = []
        for k in range(self.chunk):
            x = self.problem.step_torch(x, U[:, k])
            states.append(x)
        return torch.stack(states, dim=1)


class CompiledRollout:
    """``rollout(x0 [B, n], U [B, N, m]) -> states [B, N+1, n]`` of ``problem`` in ``dtype``,
    with the compiled step; see the module docstring. Two builds: one for a single start, with
    its buffers on the stack (a plan for one robot, MPC), and one for any batch size."""

    def __init__(self, problem: ControlProblem, dtype: torch.dtype = torch.float32,
                 chunk: int | None = None):
        self.problem, self.dtype = problem, dtype
        N = problem.horizon
        self.chunk = chunk or max(c for c in range(1, CHUNK + 1) if N % c == 0)
        self.key = problem_key(problem, self.chunk, dtype)
        self.runners = {}
        for build in ("single", "batched"):
            path = cache_dir() / f"{self.key}-{build}.pt2"
            if not path.exists():
                self._compile(path, single=build == "single")
            self.runners[build] = torch._inductor.aoti_load_package(str(path))
        _ROLLOUTS[self.key] = self

    def _compile(self, path: Path, single: bool) -> None:
        # A private copy: tracing must not leave fake tensors in the problem's constant cache.
        shadow = copy.deepcopy(self.problem)
        shadow._torch_constants = {}
        n, m = shadow.n_state, shadow.n_control
        size = 1 if single else 2
        example = (torch.zeros(size, n, dtype=self.dtype),
                   torch.zeros(size, self.chunk, m, dtype=self.dtype))
        batch = torch.export.Dim("batch", min=1, max=1 << 24)
        with torch.no_grad():
            exported = torch.export.export(
                _Chunk(shadow, self.chunk), example,
                dynamic_shapes=None if single else ({0: batch}, {0: batch}))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.pt2")
        # One fused kernel per chunk (the default caps a fusion at 64 operations); a single
        # start's intermediate buffers on the stack rather than allocated at every call.
        options = {"max_fusion_size": 4096, "aot_inductor.allow_stack_allocation": single}
        try:
            with _aten_transcendentals(), torch._inductor.config.patch(options):
                torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def __deepcopy__(self, memo: dict) -> CompiledRollout:
        return self  # the compiled step is immutable; a copied problem shares it

    def smooth(self, x0: Tensor, U: Tensor) -> Tensor:
        """States ``[B, N+1, n]`` with the dynamics run on through failure states."""
        single = len(x0) == 1
        runner = self.runners["single" if single else "batched"]
        states, x = [x0[:, None]], x0.contiguous()
        for start in range(0, U.shape[1], self.chunk):
            block = runner(x, U[:, start:start + self.chunk].contiguous())
            if single:  # its output lives in the build's own buffer, reused by the next call
                block = block.clone()
            states.append(block)
            x = block[:, -1].contiguous()
        return torch.cat(states, dim=1)

    def __call__(self, x0: Tensor, U: Tensor, terminate: bool = True) -> Tensor:
        states = torch.ops.trc.compiled_rollout(self.key, x0, U)
        if terminate and self.problem.has_failure_states:
            states = freeze_after_failure(self.problem, states)
        return states


# Computed by ATen's own kernels inside the compiled code: Inductor's versions round differently
# in the last bit (ATen picks its scalar or vectorised kernel by the tensor's layout, Inductor by
# its own), which an unstable system (a pole near upright) amplifies over the horizon: a 2%
# difference in CartPole's plans. ATen's calls cost speed on the trigonometric problems.
TRANSCENDENTALS = ("sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh",
                   "exp", "expm1", "log", "log1p")


@contextlib.contextmanager
def _aten_transcendentals() -> Iterator[None]:
    """While compiling, Inductor calls ATen for `TRANSCENDENTALS` (restored afterwards)."""
    from torch._inductor import lowering

    saved, fallbacks = dict(lowering.lowerings), set(lowering.fallbacks)
    try:
        for name in TRANSCENDENTALS:
            packet = getattr(torch.ops.aten, name)
            for overload in packet.overloads():
                lowering.lowerings.pop(getattr(packet, overload), None)
            lowering.make_fallback(packet, warn=False)
        yield
    finally:
        lowering.lowerings.clear()
        lowering.lowerings.update(saved)
        lowering.fallbacks.clear()
        lowering.fallbacks.update(fallbacks)


def freeze_after_failure(problem: ControlProblem, states: Tensor) -> Tensor:
    """Smooth trajectories ``[B, N+1, n]`` frozen at their first failing state, as
    `ControlProblem.rollout_torch` freezes them while stepping."""
    dead = problem.failed_by_torch(states)  # [B, N+1]: failed at or before each state
    first = torch.argmax(dead.to(torch.int64), dim=1)  # the first failing state (if any)
    # gather, not indexing by arange(B): a traced planner must not fix the batch size
    frozen = states.gather(1, first[:, None, None].expand(-1, 1, states.shape[2]))
    return torch.where(dead[:, :, None], frozen, states)


def problem_key(problem: ControlProblem, chunk: int, dtype: torch.dtype) -> str:
    """A name for the compiled step of ``problem``: its class, and a hash of the source of its
    module, of `trc_gym.problem` and of this module, its parameters, the chunk, the dtype and
    the torch version."""
    cls = type(problem)
    digest = hashlib.sha256()
    for module in (inspect.getmodule(cls), inspect.getmodule(ControlProblem),
                   inspect.getmodule(CompiledRollout)):  # this file: how it is compiled
        source = inspect.getsource(module)
        digest.update(source.encode())
    for name, value in sorted(vars(problem).items()):
        if name not in ("_torch_constants", "fast_rollouts"):
            value = value.tolist() if isinstance(value, np.ndarray) else value
            digest.update(f"{name}={value!r};".encode())
    digest.update(f"{chunk};{dtype};{torch.__version__}".encode())
    return f"{cls.__name__}-{str(dtype).removeprefix('torch.')}-{digest.hexdigest()[:16]}"


_warned = False


def compile_rollout(problem: ControlProblem,
                    dtype: torch.dtype = torch.float32) -> CompiledRollout | None:
    """Make ``problem`` roll out ``dtype`` plans with its compiled step (made, or loaded from
    the cache, on first use) and return it; None where compiling fails (a warning says why; the
    eager rollout stays)."""
    global _warned
    if dtype in problem.fast_rollouts:
        return problem.fast_rollouts[dtype]
    try:
        problem.fast_rollouts[dtype] = CompiledRollout(problem, dtype)
        return problem.fast_rollouts[dtype]
    except Exception as exc:  # no compiler, an export limit: the eager path serves
        if not _warned:
            warnings.warn(f"compiled rollout unavailable ({type(exc).__name__}: {exc}); "
                          f"planning with the eager rollout", stacklevel=2)
            _warned = True
        return None


# ------------------------------------------------------------------------- the custom op
# An operator, so that a traced planner (torch.jit.trace) records the call, and so that the
# backward pass can be the adjoint below.
@torch.library.custom_op("trc::compiled_rollout", mutates_args=())
def _compiled_rollout_op(key: str, x0: Tensor, U: Tensor) -> Tensor:
    return _ROLLOUTS[key].smooth(x0, U)


@_compiled_rollout_op.register_fake
def _(key: str, x0: Tensor, U: Tensor) -> Tensor:
    return x0.new_empty(x0.shape[0], U.shape[1] + 1, x0.shape[1])


def _setup_context(ctx, inputs, output) -> None:
    key, _, U = inputs
    ctx.key = key
    ctx.save_for_backward(U, output)


def _backward(ctx, grad: Tensor):
    """The adjoint: each chunk recomputed in eager torch from its saved start, last first."""
    rollout = _ROLLOUTS[ctx.key]
    U, states = ctx.saved_tensors
    chunk, problem = rollout.chunk, rollout.problem
    grad_U = torch.zeros_like(U)
    carry = grad[:, -1].clone()  # dL/dx at the end of the current chunk
    with torch.enable_grad():
        for start in reversed(range(0, U.shape[1], chunk)):
            x = states[:, start].detach().requires_grad_()
            u = U[:, start:start + chunk].detach().requires_grad_()
            block = _Chunk(problem, chunk)(x, u)
            upstream = grad[:, start + 1:start + chunk + 1].clone()
            upstream[:, -1] = carry
            g_x, g_u = torch.autograd.grad(block, (x, u), upstream)
            grad_U[:, start:start + chunk] = g_u
            carry = g_x + grad[:, start]
    return None, carry, grad_U


_compiled_rollout_op.register_autograd(_backward, setup_context=_setup_context)
