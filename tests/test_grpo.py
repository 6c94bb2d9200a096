"""GRPO / REINFORCE fine-tuning and the main job."""

import math

import numpy as np
import pytest
import torch

import trc_gym
from policies import BCConfig, GRPOConfig, TRCPolicy, finetune, train_bc
from policies.grpo import GaussianPlanner, group_advantages
from trc_gym import datasets

DI = "TRC-DoubleIntegrator-v0"


def test_group_advantages_are_centred_and_scaled_per_group():
    rewards = torch.randn(6, 8) * torch.arange(1, 7)[:, None] + 10 * torch.randn(6, 1)
    advantages = group_advantages(rewards)
    torch.testing.assert_close(advantages.sum(dim=1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(advantages.std(dim=1), torch.ones(6), atol=1e-4, rtol=0)
    assert torch.all(group_advantages(torch.ones(2, 4)) == 0)  # equal rewards: no signal


def test_the_plan_distribution_is_the_closed_form_gaussian():
    """GaussianPlanner's distribution over plans: the log-density summed over time and controls
    is the diagonal Gaussian's closed form, and its std starts at init_std of the half-range."""
    torch.manual_seed(0)
    planner = GaussianPlanner(TRCPolicy.create(DI, "small"), init_std=0.1)
    assert torch.allclose(planner.log_std.exp(), torch.full((15, 1), 0.4))  # 0.1 x 4
    with torch.no_grad():
        planner.log_std.copy_(torch.randn(15, 1) * 0.3)
    mean = torch.randn(3, 1, 15, 1)
    samples = mean + planner.log_std.exp() * torch.randn(3, 4, 15, 1)
    z = (samples - mean) / planner.log_std.exp()
    closed_form = (-0.5 * z**2 - planner.log_std - 0.5 * math.log(2 * math.pi)).sum((-2, -1))
    log_prob = planner.distribution(mean).log_prob(samples).sum(dim=(-2, -1))
    torch.testing.assert_close(log_prob, closed_form)


def test_config_errors():
    with pytest.raises(ValueError, match="algo must be"):
        GRPOConfig(algo="ppo")
    with pytest.raises(ValueError, match="group_size must be even"):
        GRPOConfig(group_size=5)


@pytest.fixture(scope="module")
def perturbed_planner():
    """A briefly cloned planner whose decoder is then deliberately knocked off."""
    data = datasets.generate(DI, 800, seed=5, progress=False)
    torch.manual_seed(0)
    policy = TRCPolicy.create(DI, "small")
    train_bc(policy, data, BCConfig(epochs=8, batch_size=64, warmup_steps=10), progress=False)
    with torch.no_grad():
        last = policy.model.control_decoder[-1]
        last.bias.add_(0.3 * torch.randn(last.bias.shape,
                                         generator=torch.Generator().manual_seed(1)))
    return policy


@pytest.mark.parametrize("algo", ["grpo", "reinforce"])
def test_short_finetuning_lowers_the_cost_of_a_perturbed_planner(perturbed_planner, algo):
    state = {k: v.clone() for k, v in perturbed_planner.model.state_dict().items()}
    config = GRPOConfig(iterations=30, starts_per_iteration=64, group_size=16, lr=3e-4,
                        init_std=0.01, kl_coef=0.0, eval_every=5, eval_starts=256, algo=algo)
    history = finetune(perturbed_planner, config, progress=False)
    perturbed_planner.model.load_state_dict(state)  # leave the fixture as it was
    costs = [row["val_cost"] for row in history]
    assert min(costs[1:]) < 0.97 * costs[0], costs
    assert history[-1]["env_steps"] == 30 * 64 * 16 * 15


def test_finetuning_is_deterministic(perturbed_planner):
    state = {k: v.clone() for k, v in perturbed_planner.model.state_dict().items()}
    runs = []
    for _ in range(2):
        perturbed_planner.model.load_state_dict(state)
        runs.append(finetune(perturbed_planner, GRPOConfig(iterations=4, starts_per_iteration=16,
                                                           group_size=4, eval_every=2,
                                                           eval_starts=64), progress=False))
    perturbed_planner.model.load_state_dict(state)
    assert [r["val_cost"] for r in runs[0]] == [r["val_cost"] for r in runs[1]]


def test_batched_rewards_are_the_env_returns(perturbed_planner):
    """GRPO's reward (-problem.cost of a sampled, possibly out-of-bound plan) is exactly the
    return of stepping the registered env with that plan."""
    import gymnasium as gym

    problem = perturbed_planner.problem
    x0, target = trc_gym.held_out_starts(DI, 2)
    plans = perturbed_planner.plan(x0, target) + np.random.default_rng(0).normal(0, 2, (2, 15, 1))
    costs = problem.cost(x0, target, plans)
    env = gym.make(DI)
    for i in range(2):
        env.reset(options={"state": x0[i], "target": target[i]})
        total = sum(env.step(plans[i, k].astype(np.float32))[1] for k in range(15))
        assert math.isclose(-total, costs[i], rel_tol=1e-5)


def test_main_job_quick_runs_end_to_end(tmp_path):
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "examples/bc_then_rl.py", "--quick", "--out",
                          str(tmp_path), "--no-progress"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| TRC fine-tuned |" in run.stdout
    for name in ("trc_bc.pt", "trc_rl.pt", "results.json", "table.md", "learning_curves.png",
                 "trajectories.png", "refinement.png", "data.npz"):
        assert (tmp_path / name).is_file(), name
    record = json.loads((tmp_path / "results.json").read_text())
    assert set(record["results"]) == {"expert", "TRC cloned", "TRC fine-tuned", "TRC cloned (MPC)",
                                      "TRC fine-tuned (MPC)", "PPO", "random", "zero"}
    assert abs(record["results"]["expert"]["gap"]) < 1e-9  # float32 actions: not exactly 0
    timings = record["timings"]  # PPO trains beside the TRC stages, so it is not in the sum
    stages = sum(timings[k] for k in ("data_seconds", "bc_seconds", "rl_seconds",
                                      "evaluation_seconds"))
    assert 0 < stages <= timings["total_seconds"]
    from policies import load_policy

    assert load_policy(tmp_path / "trc_rl.pt").metadata["rl_env_steps"] > 0


def test_main_job_budget_layers_defaults_env_settings_and_command_line(monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bc_then_rl", Path(__file__).parent.parent / "examples" / "bc_then_rl.py")
    job = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bc_then_rl", job)  # dataclasses look their module up
    spec.loader.exec_module(job)
    di = job.parse_args([])
    assert (di.data.num_samples, di.bc.batch_size, di.bc.cost_weight) == (10_000, 128, 1.0)
    vdp = job.parse_args(["--env", "TRC-VanDerPol-v0"])
    assert (vdp.bc.batch_size, vdp.bc.cost_weight, vdp.refinement_steps) == (512, 0.0, 3)
    given = job.parse_args(["--env", "TRC-VanDerPol-v0", "--quick", "--bc.batch-size", "64",
                            "--refinement-steps", "2"])
    assert (given.data.num_samples, given.bc.batch_size, given.refinement_steps) == (1000, 64, 2)
    assert given.bc.cost_weight == 0.0 and given.output_dir().name == "VanDerPol-quick"
    assert job.JobConfig().bc.batch_size == 128  # the defaults themselves are never modified
