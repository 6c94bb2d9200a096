"""Where the small planner spends its time: `torch.profiler`'s operator table, one torch thread,
with the compiled rollout on nonlinear envs as the main job runs it. Two workloads:

- batch-1 plans of the traced planner (a compiled planner, `compile()`'s default, is one call
  the profiler cannot see into);
- ``--cloning``: cloning steps at batch 512 with the true-cost term on (loss over every
  iterate, backward through the rollouts, AdamW step), as `examples/benchmark_speed.py` times
  them.

    python examples/profile_plan.py --env TRC-DoubleIntegrator-v0
    python examples/profile_plan.py --env TRC-Quadrotor2D-v0 --cloning
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import trc_gym
from policies import TRCPolicy
from policies.bc import bc_loss
from trc_gym.threads import one_thread

CLONING_BATCH = 512


def plan_step(policy: TRCPolicy):
    x0, target = trc_gym.held_out_starts(policy.env_id, 1)
    return lambda: policy.plan(x0, target)


def cloning_step(policy: TRCPolicy):
    """One cloning step with the cost term on (any plan as the demonstration: the time does
    not depend on it)."""
    problem = policy.problem
    x0, target = trc_gym.held_out_starts(policy.env_id, CLONING_BATCH, seed=7)
    demo = np.clip(np.zeros((len(x0), problem.horizon, problem.n_control)), problem.u_low,
                   problem.u_high)
    batch = [torch.as_tensor(a, dtype=torch.float32) for a in
             (x0, target, demo, problem.cost(x0, target, demo))]
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-9)
    scale = float(batch[3].mean())
    policy.model.train()

    def step() -> None:
        loss, _ = bc_loss(policy, *batch, scale, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0", choices=trc_gym.ENV_IDS)
    parser.add_argument("--cloning", action="store_true",
                        help=f"profile cloning steps at batch {CLONING_BATCH} (cost term on)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="steps profiled (default: 50 plans, 5 cloning steps)")
    parser.add_argument("--rows", type=int, default=20, help="operators shown")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.cloning else 50)
    if repeats < 1 or args.rows < 1:
        parser.error("--repeats and --rows must be at least 1")
    policy = TRCPolicy.create(args.env, "small")
    policy.compile(planner=False)
    step = cloning_step(policy) if args.cloning else plan_step(policy)
    with one_thread():
        for _ in range(3 if args.cloning else 20):  # trace, freeze, compile the VJP, warm up
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                step()
    what = f"cloning steps at batch {CLONING_BATCH}" if args.cloning else "batch-1 plans"
    print(f"{args.env}: {repeats} {what} of the small planner")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
