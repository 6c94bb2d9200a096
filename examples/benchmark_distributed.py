"""Data-parallel cloning: the seconds of a cloning epoch in one process with one thread against
K processes under torchrun (`trc train-bc --nproc K`), alternating in one run.

    python examples/benchmark_distributed.py                   # DI, small, 2 processes
    python examples/benchmark_distributed.py --batch-sizes 4096 --samples 10000 --rounds 5

Each measurement is a fresh `trc train-bc` run; its epoch time is the median of the
``seconds`` column of its ``bc_log.csv`` (one epoch's training and validation, without the
start-up of the processes), after the first epoch. Prints a table of epoch seconds and the
ratio per batch size, and writes it to ``--out``/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import trc_gym
from trc_gym import datasets
from trc_gym.files import read_csv_rows, write_text


def epoch_seconds(data: Path, out: Path, batch_size: int, epochs: int, nproc: int,
                  env: dict[str, str]) -> float:
    """The median epoch time (after the first) of one `trc train-bc` run on the CPU."""
    command = [sys.executable, "-m", "trc_gym.cli", "train-bc", "--data", str(data), "--out",
               str(out), "--epochs", str(epochs), "--batch-size", str(batch_size),
               "--patience", str(epochs), "--device", "cpu", "--nproc", str(nproc)]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    rows = read_csv_rows(out.with_suffix(".run") / "bc_log.csv")
    return statistics.median(r["seconds"] for r in rows[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0", choices=trc_gym.ENV_IDS)
    parser.add_argument("--samples", type=int, default=40_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024, 4096])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 2)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark_distributed"))
    args = parser.parse_args()
    if args.epochs < 2 or args.nproc < 2 or args.rounds < 1:
        parser.error("--epochs must be >= 2, --nproc >= 2 and --rounds >= 1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process, as torchrun sets
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        datasets.save(datasets.generate(args.env, args.samples, progress=False), data)
        rows = []
        for batch_size in args.batch_sizes:
            times: dict[int, list[float]] = {1: [], args.nproc: []}
            for r in range(args.rounds):
                for nproc in (1, args.nproc) if r % 2 == 0 else (args.nproc, 1):
                    out = Path(tmp) / f"b{batch_size}_p{nproc}_r{r}.pt"
                    times[nproc].append(epoch_seconds(data, out, batch_size, args.epochs,
                                                      nproc, env))
            one, many = (statistics.median(times[k]) for k in (1, args.nproc))
            rows.append(f"| {batch_size} | {one:.2f} | {many:.2f} | {one / many:.2f}x |")
            print(rows[-1], flush=True)
    table = "\n".join([
        f"{args.env}, small planner, {args.samples} plans, {os.cpu_count()} cores, median of "
        f"{args.rounds} alternating rounds\n",
        f"| batch | 1 process, 1 thread (s/epoch) | {args.nproc} processes (s/epoch) | speed-up |",
        "|---|---|---|---|", *rows])
    print(f"\n{table}")
    write_text(args.out / "distributed.md", table + "\n")


if __name__ == "__main__":
    main()
