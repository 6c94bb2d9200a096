"""Every method on every registered env, judged on the same held-out starts by the one shared
evaluation (`trc_gym.evaluate`): expert, TRC cloned, TRC fine-tuned (open loop, and replanning at
every step as MPC), PPO, SAC, random, zero.

    python examples/compare.py --envs TRC-DoubleIntegrator-v0        # about 12 min on 2 cores
    python examples/compare.py                                       # every registered env

Trained models are cached under ``--cache`` (default ``runs/compare/<env>/``): PPO and SAC in
``ppo/`` and ``sac/`` (retrained only when the hyperparameter table, seed or curve size changed,
or with ``--retrain``), TRC in ``trc/`` (made by the main job, `bc_then_rl.run` in this
process without its PPO, when its checkpoints are missing; ``--trc-dir`` points at an existing
main-job output instead, ``--no-trc`` skips TRC). A rerun therefore only evaluates.

Writes into ``--out`` (default ``results/compare``), per env: ``<env>.md`` (the table, the env
steps each RL baseline needed to reach TRC's gap, notes, the command), ``<env>.json`` (every
number), ``<env>_curves.png`` (test cost and gap vs env steps for PPO/SAC, TRC's points
marked) and ``<env>_gaps.png`` (gap per method); and ``compare.md``, every env's section found
there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from bc_then_rl import job_defaults, run

import trc_gym
from baselines import ExpertPolicy, RandomPolicy, ZeroPolicy
from policies import load_policy
from trc_gym.envs import env_name
from trc_gym.evaluation import HELD_OUT_SEED
from trc_gym.files import read_csv_rows, write_json, write_text
from trc_gym.threads import one_thread

QUICK = {"ppo": {"n_timesteps": 2048, "eval_freq": 1024},  # --quick: a smoke run
         "sac": {"n_timesteps": 600, "learning_starts": 200, "eval_freq": 300}}
MPC = "TRC fine-tuned (MPC)"  # the fine-tuned planner replanning from every state (predict)
METHODS = ("expert", "TRC cloned", "TRC fine-tuned", MPC, "PPO", "SAC", "random", "zero")
# The main table. SB3's env steps are its training steps plus the validation steps spent on
# model selection (both also in the notes and the JSON).
COLUMNS = ("mean_cost", "gap", "success_rate", "terminal_error", "train_seconds", "env_steps",
           "expert_solves", "parameters", "ms_per_plan", "ms_per_action")
# The sample-efficiency table: per RL baseline and gap level, the env steps its learning curve
# first reached that level at.
LEVEL_COLUMNS = ("gap", "env_steps")


# ----------------------------------------------------------------------------- SB3
def sb3_agent(algo: str, env_id: str, run_dir: Path, args: argparse.Namespace):
    """The cached PPO/SAC run in ``run_dir`` if it matches the current table, seed and curve
    size; otherwise train it (tuned budget) there. Returns ``(agent, curve rows, note)``."""
    from baselines.agent import load_agent
    from baselines.hyperparameters import hyperparameters
    from baselines.training import train_agent

    overrides = QUICK[algo] if args.quick else {}
    record_file = run_dir / "training.json"
    wanted = hyperparameters(env_id, algo, **overrides)
    note = None
    if record_file.exists() and not args.retrain:
        record = json.loads(record_file.read_text())
        stale = [name for name, ok in (
            ("hyperparameters", record.get("hyperparameters") == json.loads(json.dumps(wanted))),
            ("seed", record.get("seed") == args.seed),
            ("curve size", record.get("n_curve") == args.episodes)) if not ok]
        if not stale:
            return load_agent(run_dir), read_csv_rows(run_dir / "curve.csv"), None
        note = f"{algo.upper()} retrained: the cached run's {', '.join(stale)} differ"
        print(note)
    agent = train_agent(algo, env_id, seed=args.seed, out_dir=run_dir,
                        progress_bar=not args.no_progress, n_curve=args.episodes, **overrides)
    return agent, read_csv_rows(run_dir / "curve.csv"), note


# ----------------------------------------------------------------------------- TRC
def trc_policies(env_id: str, run_dir: Path, args: argparse.Namespace):
    """``({name: (policy, extra columns)}, notes)`` for TRC cloned / fine-tuned, running the
    main job in this process (without its PPO, which is trained and cached here) when the
    checkpoints are missing. Never raises: problems become notes."""
    files = {"TRC cloned": run_dir / "trc_bc.pt", "TRC fine-tuned": run_dir / "trc_rl.pt",
             MPC: run_dir / "trc_rl.pt"}
    notes, trained = [], False
    if not all(f.exists() for f in files.values()):
        config = dataclasses.replace(job_defaults(env_id, quick=args.quick), ppo=False,
                                     seed=args.seed, out=run_dir,
                                     progress=not args.no_progress)
        # The main job's command line with the same settings (recorded in its results.json).
        command = shlex.join(["python", "examples/bc_then_rl.py", "--env", env_id, "--out",
                              str(run_dir), "--seed", str(args.seed), "--no-ppo",
                              *(["--quick"] if args.quick else [])])
        print(f"running the main job in process (as `{command}`)", flush=True)
        start = time.perf_counter()
        try:
            run(config, command)
        except Exception as exc:  # the other rows are still worth a table
            traceback.print_exc()
            return {}, [f"TRC rows omitted: the main job failed ({exc!r})"]
        notes.append(f"TRC trained in this run by the main job, as `{command}` "
                     f"({time.perf_counter() - start:.0f} s wall; in `{run_dir}`)")
        trained = True
        if not all(f.exists() for f in files.values()):
            return {}, [*notes, "TRC rows omitted: the main job wrote no checkpoints"]
    results_file = run_dir / "results.json"
    record = json.loads(results_file.read_text()) if results_file.exists() else {}
    if record.get("command") and not trained:
        notes.append(f"TRC checkpoints from `{record['command']}` (in `{run_dir}`)")
    out = {}
    for name, path in files.items():
        try:
            policy = load_policy(path, receding_horizon=name == MPC)
        except Exception as exc:
            notes.append(f"{name} omitted: {path} does not load ({exc!r})")
            continue
        out[name] = (policy, trc_columns(name, policy, record))
    return out, notes


def trc_columns(name: str, policy: Any, record: dict) -> dict[str, Any]:
    """Budget columns of a TRC row from the main job's ``results.json`` (its own row there),
    falling back to the checkpoint's metadata; whatever is missing stays missing ('-')."""
    row = dict((record.get("results") or {}).get(name) or {})
    meta = dict(getattr(policy, "metadata", {}) or {})
    columns = {"parameters": getattr(policy, "n_parameters", None)}
    fallback = {"expert_solves": meta.get("bc_expert_solves"),
                "env_steps": 0 if name == "TRC cloned" else meta.get("rl_env_steps"),
                "train_seconds": (meta.get("bc_seconds", 0.0) + meta.get("rl_seconds", 0.0)
                                  if "bc_seconds" in meta else None)}
    for key, value in fallback.items():
        columns[key] = row.get(key, value)
    return columns


# ----------------------------------------------------------------------------- report
def steps_to_reach(curve: list[dict], level: float) -> int | None:
    """The first env-step count at which the curve's test gap is at most ``level``."""
    for row in curve:
        if row.get("test_gap", np.inf) <= level:
            return int(row["env_steps"])
    return None


def sample_efficiency(curves: dict[str, list[dict]],
                      targets: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Rows of the sample-efficiency table: per RL baseline, each gap level (the expert +1% and
    +5%, each TRC row's gap) with the env steps its curve first reached it at (or where it
    ends, when it never does), and its best checkpoint's gap with the steps it was reached at."""
    levels = {"expert +1%": 0.01, "expert +5%": 0.05,
              **{f"{name}'s gap": level for name, level in targets.items()}}
    rows: dict[str, dict[str, Any]] = {}
    for algo, curve in curves.items():
        for label, level in levels.items():
            steps = steps_to_reach(curve, level)
            rows[f"{algo}: {label}"] = {
                "gap": level, "env_steps": steps if steps is not None
                else f"not in {int(curve[-1]['env_steps']):,}"}
        best = min(curve, key=lambda row: row["test_gap"])
        rows[f"{algo}: best checkpoint"] = {"gap": best["test_gap"],
                                            "env_steps": int(best["env_steps"])}
    return rows


def env_report(env_id: str, results: dict, curves: dict, notes: list[str],
               episodes: int) -> str:
    expert = results["expert"]["mean_cost"]
    lines = [f"### {env_id}", "",
             f"{episodes} held-out starts (seed {HELD_OUT_SEED}); expert mean cost {expert:.3f}. "
             "Training wall time on this machine's CPU (SB3: training plus validation for model "
             "selection; TRC: behaviour cloning plus fine-tuning, expert data generation not "
             "included); env steps: SB3 training steps + the validation steps spent on model "
             "selection, TRC the fine-tuning rollouts; ms/episode: one plan (planners) or N "
             "`predict` calls (SB3, and TRC replanning at every step as MPC).", "",
             trc_gym.format_table({name: results[name] for name in METHODS if name in results},
                                  columns=COLUMNS, first="method")]
    targets = {name: results[name]["gap"] for name in ("TRC cloned", "TRC fine-tuned", MPC)
               if name in results}
    if curves:
        lines += ["", "Sample efficiency: the env steps each RL baseline needed to first reach "
                  "each gap to the expert (test gap at the evaluation checkpoints, `curve.csv`), "
                  "and its best checkpoint:", "",
                  trc_gym.format_table(sample_efficiency(curves, targets),
                                       columns=LEVEL_COLUMNS, first="RL baseline: gap level")]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def plot_env(env_id: str, results: dict, curves: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save_figure(fig, path: Path) -> Path:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    name = env_name(env_id)
    expert = results["expert"]["mean_cost"]
    fig, (ax_cost, ax_gap) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (algo, curve), color in zip(curves.items(), ("C0", "C1")):
        steps = [row["env_steps"] for row in curve]
        ax_cost.plot(steps, [row["test_mean_cost"] for row in curve], "o-", ms=3, color=color,
                     label=f"{algo} (checkpoints)")
        ax_gap.plot(steps, [100 * max(row["test_gap"], 1e-6) for row in curve], "o-", ms=3,
                    color=color, label=algo)
    for label, color, marker in (("TRC cloned", "C2", "s"), ("TRC fine-tuned", "C3", "*"),
                                 (MPC, "C4", "P")):
        if label in results and results[label].get("env_steps") is not None:
            x, row = results[label]["env_steps"], results[label]
            ax_cost.plot([x], [row["mean_cost"]], marker, ms=11, color=color,
                         label=f"{label} ({x:,} env steps)")
            ax_gap.axhline(100 * max(row["gap"], 1e-6), color=color, ls="--", label=label)
    ax_cost.axhline(expert, color="k", ls=":", label="expert (optimum)")
    top = max([expert * 3] + [r["mean_cost"] for k, r in results.items()
                              if k.startswith("TRC")])
    ax_cost.set_ylim(expert * 0.95, top)
    ax_gap.axhline(1.0, color="gray", ls=":", lw=1, label="+1%")
    for ax in (ax_cost, ax_gap):
        ax.set_xscale("symlog", linthresh=1000)
        ax.set_xlim(left=0)
        ax.set_xlabel("environment steps (linear below 1000, log above)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_cost.set_ylabel(f"mean cost J on {results['expert']['n_episodes']} held-out starts")
    ax_gap.set_yscale("log")
    ax_gap.set_ylabel("gap to expert (%)")
    fig.suptitle(f"{env_id}: PPO / SAC learning curves vs the TRC planner")
    curves_png = save_figure(fig, out / f"{name}_curves.png")

    methods = [m for m in METHODS if m in results and m != "expert"]
    gaps = [100 * results[m]["gap"] for m in methods]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(methods) + 1.2))
    bars = ax.barh(methods, [max(g, 1e-3) for g in gaps], color="C0")
    for bar, value in zip(bars, gaps):
        ax.text(bar.get_width() * 1.1, bar.get_y() + bar.get_height() / 2, f"{value:+.2f}%",
                va="center", fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("gap to expert (%, log scale)")
    ax.set_title(f"{env_id}: gap to the expert on the same held-out starts")
    gaps_png = save_figure(fig, out / f"{name}_gaps.png")
    return [curves_png, gaps_png]


# ----------------------------------------------------------------------------- main
def compare_env(env_id: str, args: argparse.Namespace) -> tuple[dict, dict, list[str]]:
    cache = Path(args.cache) / env_id
    policies: dict[str, tuple[Any, dict]] = {
        "expert": (ExpertPolicy(env_id), {"env_steps": 0})}
    notes: list[str] = []
    if not args.no_trc:
        trc_dir = Path(args.trc_dir.format(env=env_id)) if args.trc_dir else cache / "trc"
        trc, trc_notes = trc_policies(env_id, trc_dir, args)
        policies.update(trc)
        notes += trc_notes
    else:
        notes.append("TRC rows omitted (--no-trc)")
    curves = {}
    for algo in ("ppo", "sac"):
        agent, curve, note = sb3_agent(algo, env_id, cache / algo, args)
        info = agent.info
        policies[algo.upper()] = (agent, {
            "env_steps": info["env_steps"] + info.get("validation_env_steps", 0),
            "validation_env_steps": info.get("validation_env_steps", 0),
            "train_seconds": info["train_seconds"], "parameters": agent.n_parameters})
        curves[algo.upper()] = curve
        notes += [note] if note else []
        notes.append(f"{algo.upper()}: {info['env_steps']:,} training + "
                     f"{info.get('validation_env_steps', 0):,} validation env steps, selected "
                     f"at {info['selected_at_env_steps']:,} steps on {info.get('n_validation')}"
                     f" validation starts; settings `{json.dumps(info['hyperparameters'])}`")
    policies["random"] = (RandomPolicy(env_id, seed=args.seed), {"env_steps": 0})
    policies["zero"] = (ZeroPolicy(env_id), {"env_steps": 0})

    results = {}
    for name, (policy, extra) in policies.items():
        start = time.perf_counter()
        metrics = trc_gym.evaluate(policy, env_id, args.episodes, HELD_OUT_SEED)
        metrics.update(extra)
        results[name] = metrics
        print(f"{env_id} {name}: gap {metrics['gap']:+.3%}, success "
              f"{metrics['success_rate']:.1%} ({time.perf_counter() - start:.0f} s)", flush=True)
    return results, curves, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(trc_gym.ENV_IDS),
                        choices=trc_gym.ENV_IDS)
    parser.add_argument("--episodes", type=int, default=500, help="held-out starts")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every method")
    parser.add_argument("--cache", default="runs/compare")
    parser.add_argument("--out", default="results/compare")
    parser.add_argument("--no-trc", action="store_true", help="skip the TRC rows")
    parser.add_argument("--trc-dir", default=None,
                        help="the main job's output to use instead of <cache>/<env>/trc "
                             "('{env}' is replaced by the env id); run there when missing")
    parser.add_argument("--retrain", action="store_true", help="ignore cached PPO/SAC runs")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (a smoke run; use its own --cache and --out)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "examples/compare.py", *sys.argv[1:]])
    with one_thread():
        for env_id in args.envs:
            compare_and_write(env_id, args, command, out)
    print(f"wrote {out}/compare.md, per-env .md/.json and PNGs")


def compare_and_write(env_id: str, args: argparse.Namespace, command: str, out: Path) -> None:
    """Compare every method on ``env_id`` and write its files, then ``compare.md`` (every env's
    section found in ``out``, each with its command)."""
    start = time.perf_counter()
    results, curves, notes = compare_env(env_id, args)
    notes.append(f"this env took {time.perf_counter() - start:.0f} s in this run "
                 f"(cached models are only evaluated)")
    section = env_report(env_id, results, curves, notes, args.episodes)
    section += f"\n\nProduced by `{command}`."
    print("\n" + section + "\n", flush=True)
    name = env_name(env_id)
    write_text(out / f"{name}.md", section + "\n")
    write_json(out / f"{name}.json", {"command": command, "env_id": env_id, "results": results,
                                      "curves": curves, "notes": notes})
    plot_env(env_id, results, curves, out)
    sections = [(out / f"{env_name(i)}.md").read_text() for i in trc_gym.ENV_IDS
                if (out / f"{env_name(i)}.md").exists()]
    write_text(out / "compare.md", "\n".join(sections))


if __name__ == "__main__":
    main()
