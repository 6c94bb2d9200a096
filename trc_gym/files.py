"""The files the package writes: each is either absent, the old version, or complete, never
half-written (written to a temp file beside it, then renamed), and CSV logs read back."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def check_output_path(path: str | Path, name: str, folder: bool = False) -> Path:
    """``path`` as a place a run can write its file (``folder``: its folder) to, checked
    before any work starts: not an existing folder (file) there, nor a file on its way."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path} is a file; give a folder for the run")
    if not folder and path.is_dir():
        raise ValueError(f"{name} {path} is a folder; give a file path (in it, say)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{name} {path}: {parent} is a file, not a folder")
            break
    return path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` on a temp file beside ``path``, then rename it into place
    (readable by all: 0644). On any error the temp file is removed and the error re-raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        with _terminate_as_interrupt():
            write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; datasets and checkpoints are shared
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_directory(path: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(staging_dir)`` on a new folder beside ``path``, then swap it in for
    ``path`` as a whole (an existing folder there is replaced). On any error the staging
    folder is removed and the error re-raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the folder is meant to be shared
    try:
        with _terminate_as_interrupt():
            fill(staging)
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            if path.exists():
                os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` to ``path``, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, atomically (numpy values become lists and numbers)."""
    return write_text(path, json.dumps(data, indent=1, default=_json_default))


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` (dicts with the same keys) as CSV, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


def append_csv_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV log at ``path`` (writing the header when the file is new); a
    log grows row by row, so a crash loses at most the row being written."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_csv_rows(path: str | Path) -> list[dict[str, float]]:
    """The rows of a CSV written by `write_csv` or `append_csv_row`, as floats ([] if the file
    does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, type):
        return value.__name__
    return str(value)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (as SIGINT does), so the cleanup of
    a half-written temp file runs when a job is killed. A no-op outside the main thread, where
    signals cannot be handled."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
