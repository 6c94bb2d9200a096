"""The ``trc`` command line. Each subcommand is one function below; heavy imports are lazy."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


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


def cmd_train_bc(args: argparse.Namespace) -> None:
    import torch

    from policies import BCConfig, TRCPolicy, train_bc
    from policies.bc import PRESET_LR
    from trc_gym import datasets

    data = datasets.load(args.data, env_id=args.env)
    torch.manual_seed(args.seed)
    policy = TRCPolicy.create(args.env, args.size, env_kwargs=data.metadata.get("env_kwargs"),
                              **json.loads(args.model))
    config = BCConfig(epochs=args.epochs, lr=args.lr or PRESET_LR[args.size], seed=args.seed,
                      cost_weight=args.cost_weight)
    out = Path(args.out)
    train_bc(policy, data, config, run_dir=out.with_suffix(".run"), resume=args.resume)
    policy.save(out)
    print(f"saved {out} (validation gap {policy.metadata['bc_val_gap']:+.3%}, "
          f"{policy.n_parameters:,} parameters); logs in {out.with_suffix('.run')}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from policies import GRPOConfig, finetune, load_policy

    policy = load_policy(args.init)
    if policy.env_id != args.env:
        raise ValueError(f"{args.init} is a planner for {policy.env_id!r}, not {args.env!r}")
    config = GRPOConfig(iterations=args.iterations, algo=args.algo, seed=args.seed)
    out = Path(args.out)
    finetune(policy, config, run_dir=out.with_suffix(".run"))
    policy.save(out)
    print(f"saved {out} (validation gap {policy.metadata['rl_val_gap']:+.3%}, "
          f"{policy.metadata['rl_env_steps']:,} env steps); logs in {out.with_suffix('.run')}")


def load_any_policy(name: str, env_id: str):
    """``expert`` / ``random`` / ``zero``, a saved SB3 agent (or run) directory, or a path to a
    saved TRC planner."""
    from pathlib import Path

    from baselines import ExpertPolicy, RandomPolicy, ZeroPolicy

    simple = {"expert": ExpertPolicy, "random": RandomPolicy, "zero": ZeroPolicy}
    if name in simple:
        return simple[name](env_id)
    if any((Path(name) / sub / "agent.json").exists() for sub in ("", "best")):
        from baselines.sb3 import load_agent

        return load_agent(name)
    from policies import load_policy

    return load_policy(name)


def cmd_train_baseline(args: argparse.Namespace) -> None:
    import torch

    from baselines.sb3 import train_agent
    from trc_gym import evaluate, format_table

    torch.set_num_threads(args.threads)
    agent = train_agent(args.algo, args.env, args.timesteps, seed=args.seed, n_envs=args.n_envs,
                        eval_freq=args.eval_freq, out_dir=args.out,
                        progress_bar=not args.no_progress, env_kwargs=json.loads(args.env_kwargs),
                        **json.loads(args.set))
    info = agent.info
    print(f"{args.algo.upper()} on {args.env}: {info['env_steps']} env steps "
          f"(+{info['validation_env_steps']} for validation), {info['train_seconds']:.1f} s; "
          f"selected at {info['selected_at_env_steps']} steps; saved to {args.out}")
    metrics = evaluate(agent, args.env, args.episodes, env_kwargs=json.loads(args.env_kwargs))
    print(format_table({f"{args.algo} ({args.episodes} held-out starts)": metrics}))


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

    p = sub.add_parser("train-bc", help="behaviour-clone expert plans into a TRC planner")
    p.add_argument("--env", default="TRC-DoubleIntegrator-v0")
    p.add_argument("--data", required=True, help=".npz from `trc generate`")
    p.add_argument("--size", default="small", choices=["small", "medium", "large"])
    p.add_argument("--model", default="{}",
                   help='JSON model overrides, e.g. \'{"reasoning": "attention"}\'')
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the size's)")
    p.add_argument("--cost-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT.run/bc_state.pt")
    p.add_argument("--out", required=True, help="checkpoint path, e.g. runs/di/trc_bc.pt")
    p.set_defaults(func=cmd_train_bc)

    p = sub.add_parser("finetune", help="GRPO / REINFORCE fine-tuning of a cloned planner")
    p.add_argument("--env", default="TRC-DoubleIntegrator-v0")
    p.add_argument("--init", required=True, help="checkpoint from `trc train-bc`")
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--algo", default="grpo", choices=["grpo", "reinforce"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="evaluate a policy on held-out starts")
    p.add_argument("policy", help="expert | random | zero | path to a TRC checkpoint")
    p.add_argument("--env", default="TRC-DoubleIntegrator-v0")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=12345)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train-baseline", help="train SB3 PPO / SAC with the tuned settings")
    p.add_argument("--algo", choices=("ppo", "sac"), default="ppo")
    p.add_argument("--env", default="TRC-DoubleIntegrator-v0")
    p.add_argument("--timesteps", type=int, default=None, help="default: the tuned budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-envs", type=int, default=None, help="default: the tuned value")
    p.add_argument("--eval-freq", type=int, default=None, help="env steps between validations")
    p.add_argument("--set", default="{}", help='JSON overrides, e.g. \'{"learning_rate": 3e-4}\'')
    p.add_argument("--env-kwargs", default="{}", help='JSON, e.g. \'{"random_target": true}\'')
    p.add_argument("--episodes", type=int, default=500, help="held-out starts evaluated after")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="run directory (best/, final/, curve.csv)")
    p.set_defaults(func=cmd_train_baseline)
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
