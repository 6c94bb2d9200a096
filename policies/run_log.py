"""Training logs: one CSV row per epoch or evaluation (and TensorBoard when it is installed)."""

from __future__ import annotations

import csv
from pathlib import Path


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path`` (writing the header when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV written by `append_row`, as floats."""
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


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
