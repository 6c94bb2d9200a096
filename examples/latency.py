"""Planning latency of saved TRC planners and of the expert, at batch 1 and batch 1024, on one
torch thread (batch 1 is what one robot waits for; intra-op threads only add overhead there).

    python examples/latency.py runs/DoubleIntegrator/trc_bc.pt runs/DoubleIntegrator/trc_rl.pt
    python examples/latency.py runs/DoubleIntegrator/trc_rl.pt --compile   # compiled beside

With ``--compile`` each checkpoint is also timed compiled (`TRCPolicy.compile`: the rollout
and the whole planner), as another row.

Every checkpoint must be for the same env (and env settings): they are timed on the same starts,
in turn with the expert, so their ratios to the expert hold while the machine's speed drifts.
"""

from __future__ import annotations

import argparse

import trc_gym
from baselines import ExpertPolicy
from policies import load_policy
from trc_gym.evaluation import batch_ms_per_plan, plan_latencies_ms
from trc_gym.threads import one_thread

BATCH = 1024  # starts planned in one call for the batched time
COLUMNS = ("ms_per_plan", "vs_expert", "ms_per_plan_batched")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--starts", type=int, default=200, help="batch-1 calls timed")
    parser.add_argument("--compile", action="store_true",
                        help="time each checkpoint compiled too (another row)")
    args = parser.parse_args()
    if not 1 <= args.starts <= BATCH:
        parser.error(f"--starts must be within [1, {BATCH}]")
    policies = {path: load_policy(path) for path in args.checkpoints}
    first = next(iter(policies.values()))
    env_id, env_kwargs = first.env_id, first.env_kwargs
    other = [path for path, p in policies.items()
             if (p.env_id, p.env_kwargs) != (env_id, env_kwargs)]
    if other:
        parser.error(f"{other} are not for {env_id} {env_kwargs or ''} as "
                     f"{args.checkpoints[0]} is")
    if args.compile:
        for path in args.checkpoints:
            compiled = load_policy(path)
            compiled.compile()
            policies[f"{path}, compiled"] = compiled
    policies["expert"] = ExpertPolicy(env_id, **env_kwargs)
    x0, target = trc_gym.held_out_starts(env_id, BATCH, env_kwargs=env_kwargs)
    with one_thread():
        batch1 = plan_latencies_ms(policies, x0[:args.starts], target[:args.starts])
        rows = {name: {"ms_per_plan": batch1[name],
                       "vs_expert": batch1[name] / batch1["expert"],
                       "ms_per_plan_batched": batch_ms_per_plan(policy, x0, target)}
                for name, policy in policies.items()}
    print(f"{env_id}, one torch thread; batch 1: median of {args.starts} starts\n")
    print(trc_gym.format_table(rows, columns=COLUMNS))


if __name__ == "__main__":
    main()
