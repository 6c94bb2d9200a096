"""`one_thread`: torch on one thread inside a block, where more threads only cost time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block. Small-tensor work (a solver's per-step
    tensors, a batch-1 plan, one process of several on a small machine) gains nothing from
    intra-op threads, and on a busy machine their spinning made it up to ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
