"""Where a batch-1 plan of the small planner spends its time: `torch.profiler`'s operator table
over repeated plans, one torch thread: the traced planner, with the compiled rollout on
nonlinear envs, as the main job runs it (a compiled planner, `compile()`'s default, is one call
the profiler cannot see into).

    python examples/profile_plan.py --env TRC-DoubleIntegrator-v0
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

import trc_gym
from policies import TRCPolicy
from trc_gym.threads import one_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="TRC-DoubleIntegrator-v0", choices=trc_gym.ENV_IDS)
    parser.add_argument("--plans", type=int, default=50, help="batch-1 plans profiled")
    parser.add_argument("--rows", type=int, default=20, help="operators shown")
    args = parser.parse_args()
    if args.plans < 1 or args.rows < 1:
        parser.error("--plans and --rows must be at least 1")
    policy = TRCPolicy.create(args.env, "small")
    policy.compile(planner=False)
    x0, target = trc_gym.held_out_starts(args.env, 1)
    with one_thread():
        for _ in range(20):  # trace, freeze and warm up first
            policy.plan(x0, target)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.plans):
                policy.plan(x0, target)
    print(f"{args.env}: {args.plans} batch-1 plans of the small planner")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
