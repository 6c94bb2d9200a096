"""Hyperparameter sweeps for the SB3 baselines: short runs of candidate settings in parallel,
ranked by the gap on the VALIDATION starts (the test starts are never looked at here).

Round 1 changes one setting of the current table entry at a time (``CANDIDATES``); round 2
stacks the round-1 changes that beat the table greedily, best first, and reruns each stack on
``--seeds``. Several sweeps (env, algorithm, budget, candidates) share one pool of workers;
round-2 jobs go first as soon as their round 1 is complete. The winners go into
`baselines.hyperparameters.TUNED` by hand, with this script's report as their record.

    python examples/tune_baselines.py --workers 2 --out results/tuning \
        --sweep TRC-DoubleIntegrator-v0:ppo --sweep TRC-DoubleIntegrator-v0:sac:20000:table,lr=3e-4

A sweep is ``ENV:ALGO[:TIMESTEPS[:CANDIDATE,...[:ROUNDS]]]`` (default: the table's budget,
every candidate, ``--rounds``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from trc_gym.evaluation import format_table
from trc_gym.files import write_text

# The sweep tables: validation gap over the seeds, env steps at selection, wall time per run.
REPORT_COLUMNS = ("val_gap", "worst_val_gap", "runs", "selected_at_env_steps", "seconds_per_run")

# One-setting changes from the table's entry, per algorithm.
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "ppo": {
        "table": {},
        "lr=3e-4": {"learning_rate": 3e-4},
        "lr=3e-3": {"learning_rate": 3e-3},
        "lr=lin_1e-3": {"learning_rate": "lin_1e-3"},
        "lr=lin_3e-3": {"learning_rate": "lin_3e-3"},
        "n_steps=128": {"n_steps": 128},
        "n_steps=512": {"n_steps": 512},
        "batch=64": {"batch_size": 64},
        "batch=128": {"batch_size": 128},
        "epochs=20": {"n_epochs": 20},
        "epochs=5": {"n_epochs": 5},
        "gamma=0.99": {"gamma": 0.99},
        "gae=0.9": {"gae_lambda": 0.9},
        "gae=0.99": {"gae_lambda": 0.99},
        "clip=0.1": {"clip_range": 0.1},
        "clip=lin_0.2": {"clip_range": "lin_0.2"},
        "log_std=-2": {"policy_kwargs": {"log_std_init": -2.0}},
        "log_std=-0.5": {"policy_kwargs": {"log_std_init": -0.5}},
        "net=128x128": {"policy_kwargs": {"net_arch": [128, 128]}},
        "net=256x256": {"policy_kwargs": {"net_arch": [256, 256]}},
        "relu": {"policy_kwargs": {"activation_fn": "relu"}},
        "reward_norm": {"normalize": {"norm_reward": True}},
        "gsde": {"use_sde": True, "sde_sample_freq": 4},
        "vf_coef=1": {"vf_coef": 1.0},
    },
    "sac": {
        "table": {},
        "lr=3e-4": {"learning_rate": 3e-4},
        "lr=lin_1e-3": {"learning_rate": "lin_1e-3"},
        "batch=512": {"batch_size": 512},
        "tau=0.005": {"tau": 0.005},
        "tau=0.02": {"tau": 0.02},
        "gamma=0.99": {"gamma": 0.99},
        "net=64x64": {"policy_kwargs": {"net_arch": [64, 64]}},
        "ent=0.01": {"ent_coef": 0.01},
        "ent=auto_0.01": {"ent_coef": "auto_0.01"},
        "no_reward_norm": {"normalize": {"norm_reward": False}},
        "starts=5000": {"learning_starts": 5000},
        # Reward normalisation's running statistics never forget the random warm-up, whose
        # returns are orders of magnitude beyond a good policy's: a shorter warm-up, or a fixed
        # scale instead.
        "starts=100": {"learning_starts": 100},
        "reward_scale=0.1": {"normalize": {"norm_reward": False}, "reward_scale": 0.1},
        "grad_steps=2": {"gradient_steps": 2},
        "gsde": {"use_sde": True, "policy_kwargs": {"log_std_init": -3.0}},
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
    """Train one candidate (one process, one torch thread) and return its validation record;
    a job handed out after its deadline is skipped."""
    if time.time() > job["deadline"]:
        return {**job, "skipped": True}
    from baselines.training import train_agent
    from trc_gym.threads import one_thread

    start = time.perf_counter()
    with one_thread():
        agent = train_agent(job["algo"], job["env"], job["timesteps"], seed=job["seed"],
                            progress_bar=False, n_curve=0, **job["overrides"])
    validation = agent.info.get("validation") or {}
    return {**job, "val_gap": validation.get("gap"),
            "val_success": validation.get("success_rate"),
            "selected_at": agent.info["selected_at_env_steps"],
            "env_steps": agent.info["env_steps"], "wall_s": time.perf_counter() - start}


def summarise(results: list[dict]) -> list[dict]:
    """One row per candidate: mean and worst validation gap over seeds, best first."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r["name"], {"name": r["name"], "overrides": r["overrides"],
                                          "gaps": [], "walls": [], "selected": [],
                                          "errors": []})
        if r.get("val_gap") is None:
            row["errors"].append(r.get("error", "skipped" if r.get("skipped") else "-"))
        else:
            row["gaps"].append(r["val_gap"])
            row["walls"].append(r["wall_s"])
            row["selected"].append(r["selected_at"])
    for row in rows.values():
        gaps = row["gaps"] or [float("inf")]
        row["mean_gap"], row["worst_gap"] = sum(gaps) / len(gaps), max(gaps)
    return sorted(rows.values(), key=lambda row: row["mean_gap"])


def report(rows: list[dict], title: str) -> str:
    """``title`` over the table of `summarise`'s rows: per candidate (its name, its changes to
    the table's entry and the errors of failed runs) the mean validation gap over its runs, the
    env steps its selected models were chosen at (one per run) and its wall time per run."""
    table = {}
    for row in rows:
        changes = f" `{json.dumps(row['overrides'])}`" if row["overrides"] else ""
        note = f" ({'; '.join(sorted(set(row['errors'])))})" if row["errors"] else ""
        table[f"{row['name']}{note}{changes}"] = {
            "val_gap": row["mean_gap"] if row["gaps"] else None,
            "worst_val_gap": row["worst_gap"] if row["gaps"] else None,
            "runs": len(row["gaps"]),
            "selected_at_env_steps": ", ".join(f"{int(s):,}" for s in row["selected"]) or None,
            "seconds_per_run": sum(row["walls"]) / len(row["walls"]) if row["walls"] else None}
    return f"#### {title}\n\n" + format_table(table, columns=REPORT_COLUMNS,
                                               first="candidate `changes`")


class Sweep:
    """One (env, algorithm, budget, candidates) sweep: its jobs, results and round-2 stacks."""

    def __init__(self, spec: str, index: int, seeds: list[int], top: int, rounds: int):
        from baselines.hyperparameters import hyperparameters

        parts = spec.split(":")
        if len(parts) < 2 or parts[1] not in CANDIDATES:
            raise ValueError(f"bad sweep {spec!r}: use ENV:ALGO[:TIMESTEPS[:CANDIDATE,...]]")
        if len(parts) > 3 and not parts[3]:
            parts[3] = ",".join(CANDIDATES[parts[1]])
        self.env, self.algo, self.index = parts[0], parts[1], index
        self.timesteps = (int(float(parts[2])) if len(parts) > 2 and parts[2]
                          else hyperparameters(self.env, self.algo)["n_timesteps"])
        names = parts[3].split(",") if len(parts) > 3 else list(CANDIDATES[self.algo])
        unknown = [n for n in names if n not in CANDIDATES[self.algo]]
        if unknown:
            raise ValueError(f"unknown {self.algo} candidate(s) {unknown}; "
                             f"known: {list(CANDIDATES[self.algo])}")
        self.candidates = {n: CANDIDATES[self.algo][n] for n in ["table", *names]}
        self.seeds, self.top = seeds, top
        self.rounds = int(parts[4]) if len(parts) > 4 else rounds
        self.results: dict[int, list[dict]] = {1: [], 2: []}
        self.outstanding = {1: 0, 2: 0}

    def jobs(self, round_: int, deadline: float) -> list[dict]:
        base = {"algo": self.algo, "env": self.env, "timesteps": self.timesteps,
                "sweep": self.index, "round": round_, "deadline": deadline}
        if round_ == 1:
            specs = [(n, ch, self.seeds[0]) for n, ch in self.candidates.items()]
        else:
            round1 = summarise(self.results[1])
            table_gap = next(r["mean_gap"] for r in round1 if r["name"] == "table")
            better = [r for r in round1 if r["name"] != "table" and r["mean_gap"] < table_gap]
            stacks, changes, names = [("table", {})], {}, []
            for row in better[:self.top]:
                changes, names = merge(changes, row["overrides"]), [*names, row["name"]]
                stacks.append((" + ".join(names), changes))
            specs = [(n, ch, seed) for n, ch in stacks for seed in self.seeds]
        self.outstanding[round_] = len(specs)
        return [{**base, "name": n, "overrides": ch, "seed": seed} for n, ch, seed in specs]

    def text(self) -> str:
        out = [f"### {self.env} {self.algo.upper()}: {self.timesteps} env steps per run", "",
               "Gap: the mean over a candidate's runs of the validation gap of the model each "
               "selected; env steps: where each run's selected model was saved; training wall: "
               "seconds per run.", "",
               report(summarise(self.results[1]),
                      f"Round 1: one change at a time (seed {self.seeds[0]})")]
        if self.results[2]:
            out += ["", report(summarise(self.results[2]),
                               f"Round 2: best changes stacked (seeds {self.seeds})")]
        return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="append", required=True,
                        help="ENV:ALGO[:TIMESTEPS[:CANDIDATE,...]] (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2)
    parser.add_argument("--top", type=int, default=3, help="round-2 stack depth")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="seconds after which no new run starts")
    parser.add_argument("--out", default="results/tuning")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.deadline
    sweeps = [Sweep(spec, i, args.seeds, args.top, args.rounds)
              for i, spec in enumerate(args.sweep)]
    queue = [job for sweep in sweeps for job in sweep.jobs(1, deadline)]
    running: dict = {}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        while queue or running:
            queue.sort(key=lambda j: (-j["round"], j["sweep"]))  # round 2 first, then order
            while queue and len(running) < args.workers:
                job = queue.pop(0)
                running[pool.submit(run_one, job)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # a failed candidate is a result, not a crash
                    result = {**job, "error": repr(exc)}
                sweep = sweeps[job["sweep"]]
                sweep.results[job["round"]].append(result)
                sweep.outstanding[job["round"]] -= 1
                with open(out / "sweep.jsonl", "a") as f:
                    f.write(json.dumps(result) + "\n")
                gap = result.get("val_gap")
                print(f"{job['env']} {job['algo']} r{job['round']} {job['name']!r} seed "
                      f"{job['seed']}: val gap {'-' if gap is None else f'{gap:+.2%}'} "
                      f"({result.get('wall_s', 0):.0f} s)", flush=True)
                if (job["round"] == 1 and sweep.outstanding[1] == 0 and sweep.rounds == 2
                        and any(r["name"] == "table" and r.get("val_gap") is not None
                                for r in sweep.results[1])):
                    queue += sweep.jobs(2, deadline)
                text = "\n\n".join(s.text() for s in sweeps)
                write_text(out / "sweep.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
