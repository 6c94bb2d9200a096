"""What an accelerator changes: cloning, GRPO, the vector env and batched planning, each on the
accelerator (``--device``, default CUDA) beside the CPU, in one run.

    python examples/benchmark_gpu.py                   # on a CUDA machine; writes runs/gpu/
    python examples/benchmark_gpu.py --quick           # a smoke run (also on a CPU-only machine)

Measured (double integrator, small planner, untrained weights: speed does not depend on them):

- cloning: seconds of one epoch of ``--samples`` plans at batch ``--batch-size`` (4096), as
  `policies.train_bc` logs it, on the device and on ``--cpu-threads`` CPU threads (2: the
  laptop the package is built for);
- GRPO: simulated env steps per second of `policies.finetune` (``--grpo-starts`` starts, groups
  of 32, plans rolled out through the problem on the device);
- the vector env: env steps per second of ``gym.make_vec(..., vectorization_mode=
  "vector_entry_point", device=...)`` at 4096 and 65,536 envs;
- batched planning: plans per second of `TRCPolicy.plan` (numpy in and out) at batch 1 to
  65,536, on the device and on the CPU;
- the expert: seconds of the iLQR expert for one chunk of 256 Pendulum plans (64 in the smoke
  run), its torch parts on the device.

It also checks that the device's plans equal the CPU's to float32 rounding. Prints one table
and writes it with the device's name to ``--out``/gpu.md and gpu.json. Without an accelerator
it measures the CPU against itself, which only checks that the script runs.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import trc_gym
from policies import BCConfig, GRPOConfig, TRCPolicy, finetune, train_bc
from trc_gym import datasets
from trc_gym.devices import resolve_device
from trc_gym.evaluation import held_out_starts
from trc_gym.files import write_json, write_text

DI = "TRC-DoubleIntegrator-v0"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cloning_epoch_seconds(data: datasets.Demonstrations, device: torch.device,
                          batch_size: int) -> float:
    """Seconds of the second cloning epoch (the first includes warm-up: kernels, caches)."""
    torch.manual_seed(0)
    policy = TRCPolicy.create(DI, "small")
    config = BCConfig(epochs=2, batch_size=batch_size, warmup_steps=1, patience=2,
                      device=str(device))
    return train_bc(policy, data, config, progress=False)[-1]["seconds"]


def grpo_steps_per_second(device: torch.device, starts: int, iterations: int) -> float:
    """Simulated env steps per second of GRPO (validation included, at its end only)."""
    torch.manual_seed(0)
    policy = TRCPolicy.create(DI, "small")
    config = GRPOConfig(iterations=iterations, starts_per_iteration=starts,
                        eval_every=iterations, eval_starts=256, warmup_iterations=1,
                        device=str(device))
    history = finetune(policy, config, progress=False)
    return history[-1]["env_steps"] / history[-1]["seconds"]


def vector_env_steps_per_second(device: torch.device, num_envs: int, steps: int) -> float:
    envs = gym.make_vec(DI, num_envs=num_envs, vectorization_mode="vector_entry_point",
                        device=str(device))
    envs.reset(seed=0)
    actions = np.zeros((num_envs, 1), dtype=np.float32)
    envs.step(actions)
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(actions)
    seconds = time.perf_counter() - start
    envs.close()
    return steps * num_envs / seconds


def expert_seconds(device: torch.device, starts: int) -> float:
    """Seconds of the Pendulum expert's plans from ``starts`` held-out starts."""
    expert = trc_gym.make_expert("TRC-Pendulum-v0").to(device)
    x0, target = held_out_starts("TRC-Pendulum-v0", starts)
    start = time.perf_counter()
    expert.plan(x0, target)
    return time.perf_counter() - start


def plans_per_second(policy: TRCPolicy, batch: int, repeats: int) -> float:
    """Plans per second of `TRCPolicy.plan` at ``batch`` (best of ``repeats`` calls)."""
    x0, target = held_out_starts(DI, batch)
    policy.plan(x0, target)
    best = np.inf
    for _ in range(repeats):
        synchronize(policy.device)
        start = time.perf_counter()
        policy.plan(x0, target)
        synchronize(policy.device)
        best = min(best, time.perf_counter() - start)
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the accelerator (cuda, cuda:K)")
    parser.add_argument("--samples", type=int, default=65_536)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--grpo-starts", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu"))
    args = parser.parse_args()
    cpu = torch.device("cpu")
    try:
        device = resolve_device(args.device, "--device")
    except ValueError as exc:
        if not args.quick:
            raise SystemExit(f"benchmark_gpu: {exc}") from None
        device = cpu  # the smoke run checks the script on a machine without one
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    torch.set_num_threads(args.cpu_threads)
    samples, batches = (2048, [1, 64, 1024]) if args.quick else (
        args.samples, [1, 64, 1024, 16_384, 65_536])
    grpo_iterations = 2 if args.quick else 5
    env_sizes, env_steps = ([256], 5) if args.quick else ([4096, 65_536], 50)

    rows: list[tuple[str, float, float, str]] = []  # (measure, cpu, device, unit)
    data = datasets.generate(DI, samples, seed=0, progress=False)
    cloning = [cloning_epoch_seconds(data, d, args.batch_size) for d in (cpu, device)]
    rows.append((f"cloning epoch, {samples} plans at batch {args.batch_size}", *cloning, "s"))
    grpo = [grpo_steps_per_second(d, args.grpo_starts, grpo_iterations) for d in (cpu, device)]
    rows.append((f"GRPO, {args.grpo_starts} starts x 32 plans", *grpo, "env steps/s"))
    for num_envs in env_sizes:
        speed = [vector_env_steps_per_second(d, num_envs, env_steps) for d in (cpu, device)]
        rows.append((f"vector env, {num_envs} envs", *speed, "env steps/s"))
    torch.manual_seed(0)
    on_cpu = TRCPolicy.create(DI, "small")
    planner = {"cpu": on_cpu, "device": TRCPolicy(copy.deepcopy(on_cpu.model), DI).to(device)}
    for batch in batches:
        repeats = 20 if batch <= 1024 else 3
        speed = [plans_per_second(planner[k], batch, repeats) for k in ("cpu", "device")]
        rows.append((f"planning, batch {batch}", *speed, "plans/s"))
    expert_starts = 64 if args.quick else 256
    rows.append((f"iLQR expert, {expert_starts} Pendulum plans",
                 *(expert_seconds(d, expert_starts) for d in (cpu, device)), "s"))
    x0, target = held_out_starts(DI, 4096)
    reference = planner["cpu"].plan(x0, target)
    difference = float(np.abs(planner["device"].plan(x0, target) - reference).max()
                       / np.abs(reference).max())

    header = (f"{name} ({device}) against the CPU ({args.cpu_threads} threads), torch "
              f"{torch.__version__}; {DI}, small planner. Largest difference of the device's "
              f"plans from the CPU's, relative to the largest control: {difference:.1e}\n")
    lines = [header, f"| measure | CPU | {name} | ratio | unit |", "|---|---|---|---|---|"]
    for measure, on_cpu, on_device, unit in rows:
        ratio = on_cpu / on_device if unit == "s" else on_device / on_cpu
        lines.append(f"| {measure} | {on_cpu:,.3g} | {on_device:,.3g} | {ratio:.1f}x | {unit} |")
    table = "\n".join(lines)
    print(table)
    write_text(args.out / "gpu.md", table + "\n")
    write_json(args.out / "gpu.json", {"device": name, "torch": torch.__version__,
                                        "plan_difference": difference,
                                        "rows": [dict(zip(("measure", "cpu", "device", "unit"),
                                                          r)) for r in rows]})
    if difference > 1e-3:
        raise SystemExit(f"benchmark_gpu: the device's plans differ from the CPU's by "
                         f"{difference:.1e} of the largest control (expected float32 rounding)")


if __name__ == "__main__":
    main()
