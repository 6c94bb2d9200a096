"""Hyperparameter sweep for the SB3 baselines: short runs of candidate settings in parallel,
ranked by the gap on the VALIDATION starts (the test starts are never looked at here).

Round 1 changes one setting of the current table entry at a time (``CANDIDATES``); round 2
(``--rounds 2``) stacks the best round-1 changes greedily, best first, and reruns the stacks on
``--seeds``. The winner goes into `baselines.hyperparameters.TUNED` by hand, with this
script's report as its record.

    python examples/tune_baselines.py --env TRC-DoubleIntegrator-v0 --algo ppo \\
        --workers 2 --rounds 2 --out results/tuning
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

# One-setting changes from the table's entry, per algorithm (names are for the report).
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "ppo": {
        "table": {},
        "lr 3e-4": {"learning_rate": 3e-4},
        "lr 3e-3": {"learning_rate": 3e-3},
        "lr lin 1e-3": {"learning_rate": "lin_1e-3"},
        "lr lin 3e-3": {"learning_rate": "lin_3e-3"},
        "n_steps 128": {"n_steps": 128},
        "n_steps 512": {"n_steps": 512},
        "batch 64": {"batch_size": 64},
        "batch 128": {"batch_size": 128},
        "epochs 20": {"n_epochs": 20},
        "epochs 5": {"n_epochs": 5},
        "gamma 0.99": {"gamma": 0.99},
        "gae 0.9": {"gae_lambda": 0.9},
        "gae 0.99": {"gae_lambda": 0.99},
        "clip 0.1": {"clip_range": 0.1},
        "clip lin 0.2": {"clip_range": "lin_0.2"},
        "log_std -2": {"policy_kwargs": {"log_std_init": -2.0}},
        "log_std -0.5": {"policy_kwargs": {"log_std_init": -0.5}},
        "net 128x128": {"policy_kwargs": {"net_arch": [128, 128]}},
        "net 256x256": {"policy_kwargs": {"net_arch": [256, 256]}},
        "relu": {"policy_kwargs": {"activation_fn": "relu"}},
        "no reward norm": {"normalize": {"norm_reward": False}},
        "gSDE": {"use_sde": True, "sde_sample_freq": 4},
        "vf_coef 1": {"vf_coef": 1.0},
    },
    "sac": {
        "table": {},
        "lr 3e-4": {"learning_rate": 3e-4},
        "lr lin 1e-3": {"learning_rate": "lin_1e-3"},
        "batch 512": {"batch_size": 512},
        "tau 0.005": {"tau": 0.005},
        "tau 0.02": {"tau": 0.02},
        "gamma 0.99": {"gamma": 0.99},
        "net 64x64": {"policy_kwargs": {"net_arch": [64, 64]}},
        "ent 0.01": {"ent_coef": 0.01},
        "ent auto 0.01": {"ent_coef": "auto_0.01"},
        "no reward norm": {"normalize": {"norm_reward": False}},
        "starts 5000": {"learning_starts": 5000},
        "grad steps 2": {"gradient_steps": 2},
        "gSDE": {"use_sde": True, "policy_kwargs": {"log_std_init": -3.0}},
    },
}


def merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``, merging the nested ``policy_kwargs`` / ``normalize`` dicts."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one candidate (one process, one torch thread) and return its validation record."""
    import torch

    torch.set_num_threads(1)
    from baselines.sb3 import train_agent

    start = time.perf_counter()
    agent = train_agent(job["algo"], job["env"], job["timesteps"], seed=job["seed"],
                        progress_bar=False, n_curve=0, **job["overrides"])
    curve = agent.info.get("validation") or {}
    return {**job, "val_gap": curve.get("gap"), "val_success": curve.get("success_rate"),
            "selected_at": agent.info["selected_at_env_steps"],
            "env_steps": agent.info["env_steps"], "wall_s": time.perf_counter() - start}


def run_jobs(jobs: list[dict], workers: int, log: Path) -> list[dict]:
    """Run ``jobs`` on ``workers`` processes, appending each result to ``log`` (JSON lines)."""
    results = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:  # a failed candidate is a result too, not a crash
                result = {**futures[future], "error": repr(exc)}
            results.append(result)
            with open(log, "a") as f:
                f.write(json.dumps(result) + "\n")
            gap = result.get("val_gap")
            print(f"{result['algo']} {result['name']!r} seed {result['seed']}: "
                  f"val gap {'-' if gap is None else f'{gap:+.2%}'} "
                  f"({result.get('wall_s', 0):.0f} s)", flush=True)
    return results


def summarise(results: list[dict]) -> list[dict]:
    """One row per candidate name: mean and worst validation gap over seeds, best first."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r["name"], {"name": r["name"], "overrides": r["overrides"],
                                          "gaps": [], "walls": [], "errors": []})
        if r.get("val_gap") is None:
            row["errors"].append(r.get("error", "no validation"))
        else:
            row["gaps"].append(r["val_gap"])
            row["walls"].append(r["wall_s"])
    for row in rows.values():
        gaps = row["gaps"] or [float("inf")]
        row["mean_gap"], row["worst_gap"] = sum(gaps) / len(gaps), max(gaps)
    return sorted(rows.values(), key=lambda row: row["mean_gap"])


def report(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| candidate | changes | mean val gap | worst | seeds | s/run |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        wall = sum(row["walls"]) / len(row["walls"]) if row["walls"] else float("nan")
        changes = json.dumps(row["overrides"]) if row["overrides"] else "(table)"
        lines.append(f"| {row['name']} | `{changes}` | {row['mean_gap']:+.2%} | "
                     f"{row['worst_gap']:+.2%} | {len(row['gaps'])} | {wall:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0")
    parser.add_argument("--algo", choices=sorted(CANDIDATES), default="ppo")
    parser.add_argument("--timesteps", type=int, default=None, help="default: the table's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2)
    parser.add_argument("--top", type=int, default=4, help="round-2 stack depth")
    parser.add_argument("--only", nargs="*", default=None, help="round-1 candidate names")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="results/tuning")
    args = parser.parse_args()

    from baselines.hyperparameters import hyperparameters

    timesteps = args.timesteps or hyperparameters(args.env, args.algo)["n_timesteps"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.env}_{args.algo}"
    log = out / f"{stem}.jsonl"
    candidates = {k: v for k, v in CANDIDATES[args.algo].items()
                  if args.only is None or k in args.only or k == "table"}
    base = {"algo": args.algo, "env": args.env, "timesteps": timesteps}
    jobs = [{**base, "name": name, "overrides": changes, "seed": args.seeds[0], "round": 1}
            for name, changes in candidates.items()]
    round1 = summarise(run_jobs(jobs, args.workers, log))
    text = [f"## {args.env} {args.algo.upper()}: {timesteps} env steps per run", "",
            report(round1, f"Round 1: one change at a time (seed {args.seeds[0]})")]
    if args.rounds == 2:
        table_gap = next(r["mean_gap"] for r in round1 if r["name"] == "table")
        better = [r for r in round1 if r["name"] != "table" and r["mean_gap"] < table_gap]
        stacks, changes, names = [], {}, []
        for row in better[:args.top]:
            changes, names = merge(changes, row["overrides"]), [*names, row["name"]]
            stacks.append((" + ".join(names), changes))
        jobs = [{**base, "name": name, "overrides": ch, "seed": seed, "round": 2}
                for name, ch in [("table", {}), *stacks] for seed in args.seeds]
        round2 = summarise(run_jobs(jobs, args.workers, log))
        text += ["", report(round2, f"Round 2: best changes stacked (seeds {args.seeds})")]
    (out / f"{stem}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
