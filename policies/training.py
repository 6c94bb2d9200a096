"""What the two training loops (behaviour cloning, GRPO) share: the learning-rate schedule, the
TensorBoard writer and the atomic save of their checkpoints and resumable state."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from trc_gym.files import atomic_write


def warmup_cosine(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    """A `torch.optim.lr_scheduler.LambdaLR` factor of the step: linear warm-up to 1 over
    ``warmup`` steps, then a cosine decay to ``floor`` at step ``total`` (held after)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def tensorboard_writer(run_dir: Path | None, name: str):
    """A TensorBoard ``SummaryWriter`` under ``run_dir/tensorboard/name``, or None when
    TensorBoard is not installed (it is optional)."""
    if run_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(Path(run_dir) / "tensorboard" / name))


def atomic_torch_save(payload: dict, path: str | Path) -> Path:
    """``torch.save`` written atomically (see `trc_gym.files.atomic_write`)."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))
