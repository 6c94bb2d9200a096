"""Planning latency of saved TRC planners and of the expert, at batch 1 and batch 1024, on one
torch thread (batch 1 is what one robot waits for; intra-op threads only add overhead there).

    python examples/latency.py runs/DoubleIntegrator/trc_bc.pt runs/DoubleIntegrator/trc_rl.pt
"""

from __future__ import annotations

import argparse

import torch

import trc_gym
from baselines import ExpertPolicy
from policies import load_policy
from trc_gym.evaluation import batch_ms_per_plan, plan_latencies_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--starts", type=int, default=200, help="batch-1 calls timed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    policies = {path: load_policy(path) for path in args.checkpoints}
    env_id = next(iter(policies.values())).env_id
    policies["expert"] = ExpertPolicy(env_id)
    x0, target = trc_gym.held_out_starts(env_id, 1024)
    batch1 = plan_latencies_ms(policies, x0[:args.starts], target[:args.starts])
    for name, policy in policies.items():
        rows[name] = {"batch1": batch1[name], "vs_expert": batch1[name] / batch1["expert"],
                      "batch1024": batch_ms_per_plan(policy, x0, target)}
    columns = {"batch1": ("ms/plan, batch 1 (median)", "{:.3f}"),
               "vs_expert": ("x expert, batch 1", "{:.2f}"),
               "batch1024": ("ms/plan, batch 1024", "{:.4f}")}
    print(f"{env_id}, one torch thread\n")
    print(trc_gym.format_table(rows, columns))


if __name__ == "__main__":
    main()
