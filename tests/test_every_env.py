"""Every registered env end to end: the main job's ``--quick`` run completes on it, and, on
the envs cloned by their open-loop plans, a small planner cloned here in seconds beats the zero
and random policies on held-out starts. On the swing-ups and the quadrotor (cloned by their MPC
episodes, `bc_then_rl.REPLANNING`) seconds of
cloning do not make a planner that replans a swing-up or a flight: there the main job's
recipe, minutes of training, is measured instead (docs/recipes.md)."""

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
OPEN_LOOP = [DI, "TRC-VanDerPol-v0", pytest.param("TRC-Rocket-v0", marks=pytest.mark.slow),
             pytest.param("TRC-ObstacleNav-v0", marks=pytest.mark.slow)]


def test_the_open_loop_list_is_every_env_cloned_by_its_open_loop_plans():
    """Every env whose main job picks its clone by the open-loop plans (Van der Pol's headline
    is MPC, but its clone is chosen, and works, open loop)."""
    from bc_then_rl import job_defaults

    listed = [p if isinstance(p, str) else p.values[0] for p in OPEN_LOOP]
    assert listed == [e for e in trc_gym.ENV_IDS if job_defaults(e).bc.validation == "plan"]


@pytest.mark.parametrize("env_id", OPEN_LOOP)
def test_a_small_cloned_planner_beats_zero_and_random(env_id):
    from bc_then_rl import job_defaults

    config = job_defaults(env_id)
    samples = 64 if env_id in SLOW_EXPERTS else 128
    data = datasets.generate(env_id, samples, seed=0, workers=1, progress=False,
                             trajectory_starts=config.data.trajectory_starts)
    torch.manual_seed(0)
    policy = TRCPolicy.create(env_id, latent_dim=32, hidden_dim=64, n_refine=2)
    policy.compile(planner=False)  # the compiled rollout (built once per machine, cached)
    train_bc(policy, data, BCConfig(epochs=40, batch_size=32, cost_weight=config.bc.cost_weight,
                                    patience=40), progress=False)
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
