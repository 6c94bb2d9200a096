"""Compiled rollouts: a problem's own torch step, compiled ahead of time, for fast planning.

A rollout of a nonlinear problem is N steps of a few dozen tiny torch operations each, so in
eager torch the per-operation overhead sets its speed (about 30 ms for 100 RK4 steps at batch
1). Here the problem's `step_torch` (the same code, not a second copy of the equations) is
exported for a chunk of steps (`torch.export`) and compiled by AOTInductor into a shared
library, whose call costs microseconds; a rollout is a few such calls. There are two builds:
one for a single start (a plan for one robot, MPC; 20 to 25 steps a call, buffers on the
stack) and one for any batch size (10 steps a call). Transcendental functions are computed as
eager torch computes them (see `MKL_FUNCTIONS`), so the states are the eager rollout's bit for
bit on CPU (tests check every env), but for Rocket's batched build, whose thrust norm may
differ in the last bits (relative 1e-7 to 1e-6).

- Compiling takes 15 to 60 s per problem, dtype and build; the packages are cached on disk
  (``TRC_CACHE_DIR``, default ``~/.cache/trc_gym``), keyed by the problem's source, parameters
  and torch version, so later processes load them in well under a second.
- It needs a C++ compiler; where compiling fails, `compile_rollout` warns once and returns
  None, and the problem keeps its eager rollout (the reference).
- Failure states (a crash, a collision) are applied after the smooth rollout: a trajectory is
  frozen at its first failing state, exactly as the stepped rollout freezes it.
- Gradients flow through it (fine-tuning's exact gradient, cloning's cost term): the backward
  pass is the adjoint of the rollout, chunk by chunk, last first. Each chunk's vector-Jacobian
  product (its forward recomputed from the saved start, then its backward) is traced into
  ATen operations (`make_fx` of `torch.func.vjp`) and compiled the same way, on the first
  backward pass; where that fails, the chunk is differentiated by eager autograd.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

from trc_gym.problem import ControlProblem

# Steps per compiled call. A call costs about 3 us beside its steps, a single start's step about
# 1 us, so its build takes longer chunks (fewer calls); batched and VJP builds, whose steps cost
# more and whose compile time grows faster with the chunk, take shorter ones.
SINGLE_CHUNK, CHUNK = 25, 10
_ROLLOUTS: dict[str, CompiledRollout] = {}  # by key, for the custom op below


def cache_dir() -> Path:
    return Path(os.environ.get("TRC_CACHE_DIR", Path.home() / ".cache" / "trc_gym"))


def compile_package(module: torch.nn.Module, example: tuple[Tensor, ...], path: Path,
                    options: dict | None = None, dynamic_shapes: tuple | None = None) -> None:
    """Export ``module`` at ``example`` inputs and compile it with AOTInductor (Inductor
    ``options``) into the package ``path``, written to a temp file and renamed."""
    with torch.no_grad():
        exported = torch.export.export(module, example, dynamic_shapes=dynamic_shapes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.pt2")
    # Inductor picks the CPU wrapper's code generator (with stack allocation or not) once per
    # process, at its first compile; dropping the choice before and after makes each compile
    # pick by its own options (a single-start build compiled after a planner was otherwise
    # made without stack buffers, 10x slower).
    from torch._inductor.codegen import common

    def choose_again() -> None:
        common.device_codegens.pop("cpu", None)
        common.init_backend_registration.cache_clear()

    try:
        with torch._inductor.config.patch(options or {}):
            choose_again()
            torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
        os.replace(tmp, path)
    finally:
        choose_again()
        tmp.unlink(missing_ok=True)


def load_package(path: Path) -> Callable[[list[Tensor]], list[Tensor]]:
    """The compiled package at ``path`` as a function of its list of inputs, returning its list
    of outputs: the loader's own call, since the package's ``__call__`` adds about 20 us of
    argument handling."""
    return torch._inductor.aoti_load_package(str(path)).loader.run


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


class _ChunkVJP(torch.nn.Module):
    """The chunk's vector-Jacobian product as a graph of ATen operations:
    ``x [B, n], U [B, chunk, m], grad [B, chunk, n] -> (dL/dx [B, n], dL/dU [B, chunk, m])``
    for ``grad = dL/d(states)``."""

    def __init__(self, chunk: _Chunk, example: tuple[Tensor, Tensor, Tensor]):
        super().__init__()

        def vjp(x: Tensor, U: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
            return torch.func.vjp(chunk, x, U)[1](grad)

        self.graph_module = make_fx(vjp, tracing_mode="symbolic")(*example)

    def forward(self, x: Tensor, U: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        return tuple(self.graph_module(x, U, grad))


class CompiledRollout:
    """``rollout(x0 [B, n], U [B, N, m]) -> states [B, N+1, n]`` of ``problem`` in ``dtype``,
    with the compiled step; see the module docstring."""

    def __init__(self, problem: ControlProblem, dtype: torch.dtype = torch.float32):
        self.problem, self.dtype = problem, dtype
        N = problem.horizon
        self.chunks = {build: max(c for c in range(1, most + 1) if N % c == 0) for build, most
                       in (("single", SINGLE_CHUNK), ("batched", CHUNK), ("vjp", CHUNK))}
        self.key = problem_key(problem, dtype)
        self.runners = {build: self._load(build) for build in ("single", "batched")}
        self._vjp: Callable | None = None  # compiled at the first backward pass
        _ROLLOUTS[self.key] = self

    def _load(self, build: str) -> Callable[[list[Tensor]], list[Tensor]]:
        """The compiled ``build`` ("single", "batched" or "vjp"), compiled first if not cached:
        a function of its list of inputs, returning its list of outputs."""
        path = cache_dir() / f"{self.key}-{build}{self.chunks[build]}.pt2"
        if not path.exists():
            self._compile(path, build)
        return load_package(path)

    def _compile(self, path: Path, build: str) -> None:
        # A private copy: tracing must not leave fake tensors in the problem's constant cache.
        shadow = copy.deepcopy(self.problem)
        shadow._torch_constants = {}
        n, m, chunk = shadow.n_state, shadow.n_control, self.chunks[build]
        # A batch size that no other dimension has: symbolic tracing takes equal sizes as one.
        size = 1 if build == "single" else 17
        example = (torch.zeros(size, n, dtype=self.dtype),
                   torch.zeros(size, chunk, m, dtype=self.dtype))
        module = _Chunk(shadow, chunk)
        if build == "vjp":
            example += (torch.zeros(size, chunk, n, dtype=self.dtype),)
            module = _ChunkVJP(module, example)
        batch = torch.export.Dim("batch", min=1, max=1 << 24)
        # One fused kernel per chunk (the default caps a fusion at 64 operations), with every
        # value of more than 4 operations stored rather than inlined into its readers: inlined,
        # each RK4 stage recomputes the last for every state component it reads, 15x slower
        # per step on Quadrotor2D's 6 states. A single start's buffers on the stack.
        options = {"max_fusion_size": 4096, "realize_opcount_threshold": 4,
                   "aot_inductor.allow_stack_allocation": build == "single"}
        with _eager_transcendentals(inline_mkl=build == "single"):
            compile_package(module, example, path, options,
                            None if build == "single" else ({0: batch},) * len(example))

    def vjp(self) -> Callable:
        """The chunk's VJP (`_ChunkVJP`) compiled, made or loaded on first use; where
        compiling fails, eager autograd of the chunk (a warning says why)."""
        if self._vjp is None:
            try:
                self._vjp = self._load("vjp")
            except Exception as exc:  # an export or compiler limit: eager autograd serves
                warnings.warn(f"compiled rollout gradient unavailable ({type(exc).__name__}: "
                              f"{exc}); differentiating the rollout in eager torch",
                              stacklevel=2)
                self._vjp = _eager_vjp(self.problem, self.chunks["vjp"])
        return self._vjp

    def __deepcopy__(self, memo: dict) -> CompiledRollout:
        return self  # the compiled step is immutable; a copied problem shares it

    def smooth(self, x0: Tensor, U: Tensor) -> Tensor:
        """States ``[B, N+1, n]`` with the dynamics run on through failure states."""
        single = len(x0) == 1
        build = "single" if single else "batched"
        run, chunk = self.runners[build], self.chunks[build]
        states, x = [x0[:, None]], x0.contiguous()
        for start in range(0, U.shape[1], chunk):
            block = run([x, U[:, start:start + chunk].contiguous()])[0]
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


# The compiled code must round transcendental functions exactly as eager torch does: Inductor's
# own versions (SLEEF, libm) differ in the last bit, which an unstable system (a pole near
# upright) amplifies over the horizon into plans that differ by percent. By default they are
# ATen's own kernels, called through AOTInductor's proxy executor: exact, about 10 us a call,
# cheap beside a batch's work but most of a single start's chunk. So the single-start build
# calls, for sin and cos, what ATen itself calls on x86: MKL's vector math (`at::vml`, in
# high-accuracy mode), exported by libtorch_cpu, which the compiled library links. It calls
# `vsSin` (VML's process-wide mode, high accuracy as torch leaves it: the same values as ATen's
# `vmsSin` with that mode given, tested) rather than `vmsSin`, which sets and restores the mode
# on each call: about 1 us of the 1.6 us of one single-value call. (For a batch, the generated
# code makes one MKL call per value, slower than ATen's one call per operation.)
MKL_FUNCTIONS = ("sin", "cos") if torch.backends.mkl.is_available() else ()
TRANSCENDENTALS = ("sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh",
                   "exp", "expm1", "log", "log1p")
_KERNEL_HEADER = "#include <torch/csrc/inductor/cpp_prefix.h>"


def _mkl_call(name: str) -> str:
    """C++ statements applying MKL's ``name`` in place to ``n`` values of type ``T`` at ``b``."""
    f = name.capitalize()
    return f"if constexpr (sizeof(T) == 4) vs{f}(n, b, b); else vd{f}(n, b, b);"


def _mkl_override(name: str, vector: bool) -> staticmethod:
    """Inductor's C++ code for ``name`` of one value, or of a `Vectorized` one, by MKL."""
    def code(x: object) -> str:
        if vector:
            return ("[](auto v) { using V = decltype(v); using T = typename V::value_type; "
                    "__at_align__ T b[V::size()]; v.store(b); const int n = V::size(); "
                    f"{_mkl_call(name)} return V::loadu(b); }}({x})")
        return ("[](auto v) { using T = decltype(v); T b[1] = {v}; const int n = 1; "
                f"{_mkl_call(name)} return b[0]; }}({x})")
    code.__name__ = name  # Inductor looks some overrides up by name
    return staticmethod(code)


@contextlib.contextmanager
def _eager_transcendentals(inline_mkl: bool) -> Iterator[None]:
    """While compiling, `TRANSCENDENTALS` round as in eager torch (restored afterwards):
    `MKL_FUNCTIONS` by MKL calls in the generated code if ``inline_mkl``, the rest (or all)
    by ATen's kernels."""
    from torch._inductor import lowering
    from torch._inductor.codegen import cpp

    saved, fallbacks = dict(lowering.lowerings), set(lowering.fallbacks)
    inlined = MKL_FUNCTIONS if inline_mkl else ()
    overrides = [(cls, name, cls.__dict__[name]) for name in inlined
                 for cls in (cpp.CppOverrides, cpp.CppVecOverrides)]
    codegen_group = cpp.KernelGroup.codegen_group
    declarations = "".join(
        f'extern "C" void vs{f}(int, const float*, float*);\n'
        f'extern "C" void vd{f}(int, const double*, double*);\n'
        for f in (name.capitalize() for name in inlined))

    def declaring_codegen_group(self, *args, **kwargs) -> str:
        code = codegen_group(self, *args, **kwargs)
        return code.replace(_KERNEL_HEADER, f"{_KERNEL_HEADER}\n{declarations}", 1)

    try:
        for name in inlined:
            setattr(cpp.CppOverrides, name, _mkl_override(name, vector=False))
            setattr(cpp.CppVecOverrides, name, _mkl_override(name, vector=True))
        cpp.KernelGroup.codegen_group = declaring_codegen_group
        for name in TRANSCENDENTALS:
            if name in inlined:
                continue
            packet = getattr(torch.ops.aten, name)
            for overload in packet.overloads():
                lowering.lowerings.pop(getattr(packet, overload), None)
            lowering.make_fallback(packet, warn=False)
        yield
    finally:
        cpp.KernelGroup.codegen_group = codegen_group
        for cls, name, method in overrides:
            setattr(cls, name, method)
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


def problem_key(problem: ControlProblem, dtype: torch.dtype) -> str:
    """A name for the compiled step of ``problem``: its class, and a hash of the source of its
    module, of `trc_gym.problem` and of this module, its parameters, the dtype and the torch
    version."""
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
    digest.update(f"{dtype};{torch.__version__}".encode())
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


def _eager_vjp(problem: ControlProblem, chunk: int) -> Callable:
    """`_ChunkVJP` by eager autograd, called as the compiled one: ``vjp([x, U, grad])``."""
    def vjp(inputs: list[Tensor]) -> tuple[Tensor, Tensor]:
        x, U, grad = inputs
        with torch.enable_grad():
            x, U = x.detach().requires_grad_(), U.detach().requires_grad_()
            return torch.autograd.grad(_Chunk(problem, chunk)(x, U), (x, U), grad)
    return vjp


def _backward(ctx, grad: Tensor):
    """The adjoint: each chunk's VJP from its saved start, last chunk first."""
    rollout = _ROLLOUTS[ctx.key]
    U, states = ctx.saved_tensors
    chunk, vjp = rollout.chunks["vjp"], rollout.vjp()
    grad_U = torch.empty_like(U)
    carry = grad[:, -1]  # dL/dx at the end of the current chunk
    for start in reversed(range(0, U.shape[1], chunk)):
        upstream = grad[:, start + 1:start + chunk + 1].clone()
        upstream[:, -1] = carry
        g_x, g_u = vjp([states[:, start].contiguous(), U[:, start:start + chunk].contiguous(),
                        upstream])
        grad_U[:, start:start + chunk] = g_u
        carry = g_x + grad[:, start]
    return None, carry, grad_U


_compiled_rollout_op.register_autograd(_backward, setup_context=_setup_context)
