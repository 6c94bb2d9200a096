"""`resolve_device`: the ``device`` option of every stage (``auto``, ``cpu``, ``cuda``,
``cuda:1``) as a `torch.device`, checked before any work starts."""

from __future__ import annotations

import re

import torch

DEVICE_HELP = "auto (CUDA where present, else the CPU), cpu, cuda or cuda:K"


def resolve_device(name: str | torch.device, argument: str = "device") -> torch.device:
    """``name`` as a `torch.device`: ``auto`` is ``cuda`` where CUDA is present, else ``cpu``.
    ValueError naming ``argument`` for anything else, and for a CUDA device this machine does
    not have."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"{argument} must be {DEVICE_HELP}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{argument} is {name!r}, but torch finds no CUDA device here "
                             f"(torch {torch.__version__}); use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{argument} is {name!r}, but this machine has {count} CUDA "
                             f"device(s): cuda:0 to cuda:{count - 1}")
    return device
