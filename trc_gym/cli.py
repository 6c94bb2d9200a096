"""trc: expert data, TRC training, baselines and evaluation from the command line.

Each subcommand is one dataclass below; its options and their defaults come from the stage's
config dataclass (`DataConfig`, `BCConfig`, `GRPOConfig`), so the CLI, the Python API and the
main job share one set of defaults. `trc <command> --help` lists every option.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tyro

from policies.bc import BCConfig
from policies.distributed import is_main
from policies.grpo import GRPOConfig
from trc_gym.checks import check_number
from trc_gym.datasets import DataConfig
from trc_gym.envs import DEFAULT_ENV_ID, make_problem
from trc_gym.evaluation import DEFAULT_EPISODES, HELD_OUT_SEED
from trc_gym.files import check_output_path

Size = Literal["small", "medium", "large"]


def json_object(text: str, name: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object (ValueError naming ``name`` otherwise)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must be a JSON object, e.g. '{{}}': {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, e.g. '{{}}', got {text!r}")
    return value


@dataclass
class Generate:
    """Expert demonstrations: sample starts, solve each with the env's expert, write .npz."""

    out: Path
    """Dataset file to write (.npz)."""
    env: str = DEFAULT_ENV_ID
    """Registered env id."""
    env_kwargs: str = "{}"
    """Problem options as JSON, e.g. '{"random_target": true}'."""
    shard: str | None = None
    """Solve only part i/K of the run's samples (0 <= i < K), e.g. 0/4: run all K (on any
    machines), then `trc merge` the parts into the dataset of the whole run."""
    progress: bool = True
    """Show a progress bar."""
    data: tyro.conf.OmitArgPrefixes[DataConfig] = field(default_factory=DataConfig)

    def run(self) -> None:
        from trc_gym import datasets

        check_output_path(self.out, "--out")
        env_kwargs = json_object(self.env_kwargs, "--env-kwargs")
        shard = (0, 1) if self.shard is None else datasets.parse_shard(self.shard)
        start = time.perf_counter()
        data = datasets.generate(self.env, self.data.num_samples, seed=self.data.seed,
                                 workers=self.data.workers, env_kwargs=env_kwargs,
                                 trajectory_starts=self.data.trajectory_starts, shard=shard,
                                 device=self.data.device, margin=self.data.margin,
                                 progress=self.progress)
        path = datasets.save(data, self.out)
        part = f" (shard {shard[0]}/{shard[1]})" if self.shard is not None else ""
        print(f"wrote {len(data)} expert plans of {self.env}{part} to {path} "
              f"(mean cost {data.costs.mean():.3f}, {time.perf_counter() - start:.1f} s)")


@dataclass
class Merge:
    """Join the shards of one `trc generate --shard i/K` run into its whole dataset."""

    parts: tyro.conf.Positional[list[Path]]
    """The K shard files, in any order."""
    out: Path
    """Dataset file to write (.npz)."""

    def run(self) -> None:
        from trc_gym import datasets

        check_output_path(self.out, "--out")
        data = datasets.merge([datasets.load(part) for part in self.parts])
        path = datasets.save(data, self.out)
        print(f"wrote {len(data)} expert plans of {data.metadata['env_id']} from "
              f"{len(self.parts)} shards to {path}")


@dataclass
class TrainBC:
    """Behaviour-clone expert plans into a TRC planner."""

    data: Path
    """Dataset from `trc generate`."""
    out: Path
    """Checkpoint to write, e.g. runs/di/trc_bc.pt (logs go to OUT.run/)."""
    env: str | None = None
    """Env id (default: the dataset's; must match it)."""
    size: Size = "small"
    """Preset size of the planner."""
    model: str = "{}"
    """Model config overrides as JSON, e.g. '{"reasoning": "attention"}'."""
    resume: bool = False
    """Continue from OUT.run/bc_state.pt."""
    nproc: int = 1
    """Processes training data-parallel on this machine (launches torchrun; see
    policies.distributed; for several machines run torchrun yourself)."""
    progress: bool = True
    """Show a progress bar."""
    bc: tyro.conf.OmitArgPrefixes[BCConfig] = field(default_factory=BCConfig)

    def run(self) -> None:
        import torch

        from policies import TRCPolicy, train_bc
        from trc_gym import datasets

        run_dir = check_run_paths(self.out)
        data = datasets.load(self.data, env_id=self.env)
        torch.manual_seed(self.bc.seed)
        policy = TRCPolicy.create(data.metadata["env_id"], self.size,
                                  env_kwargs=data.metadata.get("env_kwargs"),
                                  **json_object(self.model, "--model"))
        train_bc(policy, data, self.bc, run_dir=run_dir, resume=self.resume,
                 progress=self.progress)
        if is_main():
            policy.save(self.out)
            print(f"saved {self.out} (validation gap {policy.metadata['bc_val_gap']:+.3%}, "
                  f"{policy.n_parameters:,} parameters); logs in {self.out.with_suffix('.run')}")


@dataclass
class Finetune:
    """GRPO (or REINFORCE) fine-tuning of a cloned planner."""

    init: Path
    """Checkpoint from `trc train-bc`."""
    out: Path
    """Checkpoint to write (logs go to OUT.run/)."""
    env: str | None = None
    """Env id (default: the checkpoint's; must match it)."""
    nproc: int = 1
    """Processes training data-parallel on this machine (launches torchrun; see
    policies.distributed; for several machines run torchrun yourself)."""
    progress: bool = True
    """Show a progress bar."""
    rl: tyro.conf.OmitArgPrefixes[GRPOConfig] = field(default_factory=GRPOConfig)

    def run(self) -> None:
        from policies import finetune, load_policy

        run_dir = check_run_paths(self.out)
        policy = load_policy(self.init)
        if self.env is not None and policy.env_id != self.env:
            raise ValueError(f"{self.init} is a planner for {policy.env_id!r}, not {self.env!r}")
        finetune(policy, self.rl, run_dir=run_dir, progress=self.progress)
        if is_main():
            policy.save(self.out)
            print(f"saved {self.out} (validation gap {policy.metadata['rl_val_gap']:+.3%}, "
                  f"{policy.metadata['rl_env_steps']:,} env steps); logs in "
                  f"{self.out.with_suffix('.run')}")


@dataclass
class Evaluate:
    """Evaluate a policy on held-out starts and print its row of the table."""

    policy: tyro.conf.Positional[str]
    """expert | random | zero | a TRC checkpoint | an SB3 agent or run folder."""
    env: str | None = None
    """Env id (default: the policy's own; expert/random/zero: TRC-DoubleIntegrator-v0)."""
    episodes: int = DEFAULT_EPISODES
    """Held-out starts."""
    seed: int = HELD_OUT_SEED
    """Seed of the held-out starts."""
    mpc: bool = False
    """Replan from every state (receding horizon) instead of executing one plan."""
    device: str = "auto"
    """Where a TRC planner plans: auto (CUDA where present, else the CPU), cpu, cuda or
    cuda:K (SB3 agents: where their network runs)."""

    def run(self) -> None:
        from trc_gym import evaluate, format_table
        from trc_gym.devices import resolve_device

        device = resolve_device(self.device, "--device")
        policy, env_id = load_any_policy(self.policy, self.env, self.mpc, device)
        metrics = evaluate(policy, env_id, self.episodes, self.seed)
        print(f"{env_id}: {self.episodes} starts (seed {self.seed})\n")
        print(format_table({self.policy: metrics}))


@dataclass
class TrainBaseline:
    """Train SB3 PPO or SAC with the tuned settings, then evaluate it."""

    out: Path
    """Run folder to write (best/, final/, curve.csv, training.json)."""
    algo: Literal["ppo", "sac"] = "ppo"
    """The SB3 algorithm."""
    env: str = DEFAULT_ENV_ID
    """Registered env id."""
    timesteps: int | None = None
    """Env steps of training (default: the tuned budget of baselines.hyperparameters)."""
    seed: int = 0
    """Seed of the algorithm and its envs."""
    n_envs: int | None = None
    """Parallel training envs (default: the tuned value)."""
    eval_freq: int | None = None
    """Env steps between validations (default: the tuned value)."""
    set: str = "{}"
    """Hyperparameter overrides as JSON, e.g. '{"learning_rate": 3e-4}'."""
    env_kwargs: str = "{}"
    """Problem options as JSON, e.g. '{"random_target": true}'."""
    episodes: int = 500
    """Held-out starts evaluated after training."""
    threads: int = 1
    """Torch threads."""
    device: str = "cpu"
    """Where SB3's networks run: cpu (the default: SB3 runs MLP policies faster there), auto,
    cuda or cuda:K."""
    progress: bool = True
    """Show a progress bar."""

    def run(self) -> None:
        import torch

        from baselines import train_agent
        from trc_gym import evaluate, format_table

        check_output_path(self.out, "--out", folder=True)
        check_number(self.episodes, "--episodes", minimum=1, integer=True)
        check_number(self.threads, "--threads", minimum=1, integer=True)
        env_kwargs = json_object(self.env_kwargs, "--env-kwargs")
        overrides = json_object(self.set, "--set")
        make_problem(self.env, **env_kwargs)  # the id and options, before training
        torch.set_num_threads(self.threads)
        agent = train_agent(self.algo, self.env, self.timesteps, seed=self.seed,
                            n_envs=self.n_envs, eval_freq=self.eval_freq, out_dir=self.out,
                            progress_bar=self.progress, env_kwargs=env_kwargs,
                            device=self.device, **overrides)
        info = agent.info
        print(f"{self.algo.upper()} on {self.env}: {info['env_steps']} env steps "
              f"(+{info['validation_env_steps']} for validation), {info['train_seconds']:.1f} "
              f"s; selected at {info['selected_at_env_steps']} steps; saved to {self.out}")
        metrics = evaluate(agent, self.env, self.episodes, env_kwargs=env_kwargs)
        print(format_table({f"{self.algo} ({self.episodes} held-out starts)": metrics}))


def check_run_paths(out: Path) -> Path:
    """Check a checkpoint path and its log folder ``OUT.run`` before training; returns the
    folder."""
    check_output_path(out, "--out")
    run_dir = out.with_suffix(".run")
    if run_dir == out:
        raise ValueError(f"--out {out} would be its own log folder ({run_dir}); give a file "
                         f"name such as {out.with_suffix('.pt')}")
    return check_output_path(run_dir, "the log folder of --out", folder=True)


def load_any_policy(name: str, env_id: str | None = None, mpc: bool = False,
                    device: str = "cpu"):
    """``(policy, env_id)``: ``expert`` / ``random`` / ``zero`` for ``env_id`` (default
    `DEFAULT_ENV_ID`), or a saved SB3 agent (or run) folder or TRC checkpoint, whose own env is
    used and must equal ``env_id`` when that is given. ``mpc``: replan at every step;
    ``device``: where a loaded planner or agent runs."""
    from baselines import ExpertPolicy, RandomPolicy, ZeroPolicy

    simple = {"expert": ExpertPolicy, "random": RandomPolicy, "zero": ZeroPolicy}
    if name in simple:
        env_id = env_id or DEFAULT_ENV_ID
        policy = simple[name](env_id)
        if mpc:
            policy.receding_horizon = True
        return policy, env_id
    if any((Path(name) / sub / "agent.json").exists() for sub in ("", "best", "final")):
        if mpc:
            raise ValueError("--mpc applies to planners, not to SB3 agents")
        from baselines import load_agent

        policy = load_agent(name, device)
    else:
        from policies import load_policy

        policy = load_policy(name, receding_horizon=mpc, device=device)
    if env_id is not None and env_id != policy.env_id:
        raise ValueError(f"{name} was trained on {policy.env_id!r}, not {env_id!r}")
    return policy, policy.env_id


SUBCOMMANDS = {"generate": Generate, "merge": Merge, "train-bc": TrainBC, "finetune": Finetune,
               "train-baseline": TrainBaseline, "evaluate": Evaluate}


def parse(argv: list[str] | None = None) -> Any:
    """The subcommand object ``argv`` asks for, with its options (a malformed command line
    exits with tyro's message, as argparse does)."""
    command = Union[tuple(Annotated[cls, tyro.conf.subcommand(name)]  # noqa: UP007
                          for name, cls in SUBCOMMANDS.items())]
    return tyro.cli(command, args=argv, prog="trc", description=__doc__)


def launch_processes(argv: list[str], nproc: int) -> int:
    """Run this command line in ``nproc`` processes under torchrun on this machine (its
    ``--nproc`` dropped); returns torchrun's exit code."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "trc_gym.cli", *rest]
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input ends in one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    name = next((a for a in argv if a in SUBCOMMANDS), "")
    try:
        command = parse(argv)
        nproc = getattr(command, "nproc", 1)
        check_number(nproc, "--nproc", minimum=1, integer=True)
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            return launch_processes(argv, nproc)
        command.run()
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"trc {name}: error: {exc}".replace("  ", " "), file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
