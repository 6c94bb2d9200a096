"""One cloning recipe on one dataset, judged both ways: the planner's plans run open loop, and
the planner replanning from every state (MPC), on held-out starts. The study behind the main
job's per-env defaults (`bc_then_rl.ENV_DEFAULTS`, docs/recipes.md).

    python examples/bc_then_rl.py --env TRC-Pendulum-v0        # writes runs/Pendulum/data.npz
    python examples/clone_and_evaluate.py --data runs/Pendulum/data.npz --bc.epochs 60 \
        --bc.batch-size 256 --bc.cost-weight 1

Prints one JSON line: the recipe, cloning time and epochs, and each mode's gap, success and mean
cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

import trc_gym
from policies import BCConfig, TRCPolicy, train_bc
from trc_gym import datasets
from trc_gym.threads import one_thread


@dataclass
class Args:
    data: Path
    """Dataset from `trc generate` or the main job (its env is the dataset's)."""
    bc: BCConfig = field(default_factory=BCConfig)
    size: Literal["small", "medium", "large"] = "small"
    """Preset size of the planner."""
    episodes: int = 300
    """Held-out starts of each evaluation."""


def main(args: Args) -> dict:
    data = datasets.load(args.data)
    env_id = data.metadata["env_id"]
    torch.manual_seed(args.bc.seed)
    policy = TRCPolicy.create(env_id, args.size)
    policy.compile(planner=False)
    start = time.perf_counter()
    history = train_bc(policy, data, args.bc, progress=False)
    record = {"env_id": env_id, "data": str(args.data), "size": args.size, "bc": asdict(args.bc),
              "bc_seconds": round(time.perf_counter() - start), "epochs": len(history),
              "best_val_gap": min(row["val_gap"] for row in history)}
    for mode, replanning in (("open loop", False), ("MPC", True)):
        policy.receding_horizon = replanning
        metrics = trc_gym.evaluate(policy, env_id, args.episodes, latency_samples=0)
        record[mode] = {k: metrics[k] for k in ("gap", "success_rate", "mean_cost")}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    with one_thread():
        main(tyro.cli(Args))
