"""The ``trc`` command line. Each subcommand is one function below; heavy imports are lazy."""

from __future__ import annotations

import argparse
import json
import sys
import time


def cmd_generate(args: argparse.Namespace) -> None:
    from trc_gym import datasets

    start = time.perf_counter()
    data = datasets.generate(args.env, args.num_samples, seed=args.seed, workers=args.workers,
                             env_kwargs=json.loads(args.env_kwargs))
    path = datasets.save(data, args.out)
    print(f"wrote {len(data)} expert plans of {args.env} to {path} "
          f"(mean cost {data.costs.mean():.3f}, {time.perf_counter() - start:.1f} s)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from trc_gym import evaluate, format_table

    policy = load_any_policy(args.policy, args.env)
    metrics = evaluate(policy, args.env, args.episodes, args.seed)
    print(format_table({args.policy: metrics}))


def load_any_policy(name: str, env_id: str):
    """``expert`` / ``random`` / ``zero``, or a path to a saved TRC planner."""
    from baselines import ExpertPolicy, RandomPolicy, ZeroPolicy

    simple = {"expert": ExpertPolicy, "random": RandomPolicy, "zero": ZeroPolicy}
    if name in simple:
        return simple[name](env_id)
    from policies import load_policy

    return load_policy(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="expert demonstrations -> .npz")
    p.add_argument("--env", default="TRC-DoubleIntegrator-v0")
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes for slow experts")
    p.add_argument("--env-kwargs", default="{}", help='JSON, e.g. \'{"random_target": true}\'')
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="evaluate a policy on held-out starts")
    p.add_argument("policy", help="expert | random | zero | path to a TRC checkpoint")
    p.add_argument("--env", default="TRC-DoubleIntegrator-v0")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=12345)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"trc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
