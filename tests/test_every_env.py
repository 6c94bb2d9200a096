"""Every registered env end to end: a small planner cloned here beats the zero and random
policies on held-out starts, in the env's headline mode (`bc_then_rl.ENV_DEFAULTS`), and the
main job's ``--quick`` run completes on it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trc_gym
from baselines import RandomPolicy, ZeroPolicy
from policies import BCConfig, TRCPolicy, train_bc
from trc_gym import datasets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the main job's module, bc_then_rl

DI = "TRC-DoubleIntegrator-v0"
SLOW_EXPERTS = ("TRC-CartPole-v0", "TRC-ObstacleNav-v0")  # 0.3 s per expert plan


@pytest.mark.parametrize("env_id", trc_gym.ENV_IDS)
def test_a_small_cloned_planner_beats_zero_and_random(env_id):
    from bc_then_rl import job_defaults

    config = job_defaults(env_id)
    samples = 64 if env_id in SLOW_EXPERTS else 128
    data = datasets.generate(env_id, samples, seed=0, workers=1, progress=False,
                             trajectory_starts=config.data.trajectory_starts)
    torch.manual_seed(0)
    policy = TRCPolicy.create(env_id, latent_dim=32, hidden_dim=64, n_refine=2)
    train_bc(policy, data, BCConfig(epochs=40, batch_size=32, cost_weight=config.bc.cost_weight,
                                    patience=40), progress=False)
    policy.receding_horizon = config.headline == "MPC"
    costs = {name: trc_gym.evaluate(candidate, env_id, 48, latency_samples=0)["mean_cost"]
             for name, candidate in (("TRC", policy), ("zero", ZeroPolicy(env_id)),
                                     ("random", RandomPolicy(env_id, seed=0)))}
    assert costs["TRC"] < min(costs["zero"], costs["random"]), costs


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [e for e in trc_gym.ENV_IDS if e != DI])  # DI: test_grpo
def test_main_job_quick_runs_on_every_env(env_id, tmp_path):
    run = subprocess.run([sys.executable, "examples/bc_then_rl.py", "--env", env_id, "--quick",
                          "--data.num-samples", "200", "--out", str(tmp_path), "--no-progress"],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["env_id"] == env_id and record["headline"] in record["results"]
    for name in ("trc_bc.pt", "trc_rl.pt", "table.md", "learning_curves.png",
                 "trajectories.png", "refinement.png"):
        assert (tmp_path / name).is_file(), name
