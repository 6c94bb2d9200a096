"""Data-parallel training on `torch.distributed`: what cloning and fine-tuning need of it.

``torchrun --nproc_per_node K -m trc_gym.cli train-bc ...`` (or ``trc train-bc --nproc K``,
which launches it) starts ``K`` processes; each calls `setup`, which joins the process group
(gloo on the CPU, NCCL on CUDA) from torchrun's environment. Every process then holds the same
weights and draws the same random numbers; each computes the loss of its own slice of every
global batch (`rank_slice`), `DistributedDataParallel` averages the gradients, and so every
process takes the same optimizer step as one process on the whole batch would (to float
rounding of the gradient sum). Only rank 0 writes logs and checkpoints (`is_main`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Processes in the job (1 outside `torch.distributed`)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside `torch.distributed`)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the logs, checkpoints and progress bars."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment), with
    gloo on the CPU and NCCL on CUDA; returns the device of this process (``cuda:LOCAL_RANK``
    for CUDA). Outside torchrun, or once joined, it changes nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def rank_slice(index: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This process's part of a global batch ``index [b]`` (`torch.tensor_split` into
    `world_size` parts) and the weight of its mean loss, ``K * len(part) / b``: the average
    of the weighted part losses over the processes is the whole batch's mean loss, also where
    ``b`` does not divide evenly. A process left without a part (``b`` below the process
    count) gets the whole batch at weight 0: every process must run each forward and backward
    for the gradient average, and an empty batch's mean loss would be NaN."""
    part = torch.tensor_split(index, world_size())[rank()]
    if len(part) == 0:
        return index, 0.0
    return part, world_size() * len(part) / len(index)


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in `DistributedDataParallel` inside a process group (its forward
    then averages the gradients over the processes in backward), else ``module`` itself."""
    if not dist.is_initialized():
        return module
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def all_mean(value: float) -> float:
    """The mean of ``value`` over the processes (a statistic to log)."""
    if not dist.is_initialized():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces CUDA tensors
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / world_size()


def sharded_mean(values_of: Callable[[np.ndarray], np.ndarray], n: int) -> float:
    """The mean of ``values_of(index) [len(index)]`` over ``index = range(n)``, each process
    computing its own `rank_slice` of it."""
    part, weight = rank_slice(torch.arange(n))
    return all_mean(weight * float(values_of(part.numpy()).mean()) if weight else 0.0)
