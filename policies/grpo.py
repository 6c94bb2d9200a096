"""GRPO / policy-gradient fine-tuning of a TRC planner, in our own code.

The planner becomes a Gaussian policy over the whole control sequence: mean = the planner's
plan ``mu(x0, x*) [N, m]``, a learnable per-step log-std (small at the start). Each iteration
draws start states, samples a group of G plans per start, rolls every plan out through the
problem's batched simulator (reward = -J, exactly the env's return), normalises advantages
within each group (drawn as mirrored pairs ``mu +- eps``: near an optimum the cost is nearly
quadratic, and mirroring cancels its curvature from the gradient estimate, which would otherwise
drown the small first-order signal), and takes a few epochs of clipped-ratio updates with a KL
penalty to the frozen cloned planner. ``algo="reinforce"`` is the plain REINFORCE update with
the group baseline (one gradient step per batch, no ratio), kept beside it for comparison.

Known trap: RL right after cloning collapses easily. The defaults start from a small std (a
cloned plan is already near the optimum, where a wide Gaussian mostly measures the cost's
curvature and the bound's kinks), a low, warmed-up learning rate, the clipped ratio and the KL
term, and the best planner on validation starts is kept.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from policies.policy import TRCPolicy, atomic_torch_save
from policies.run_log import append_row, tensorboard_writer


@dataclass
class GRPOConfig:
    iterations: int = 100
    starts_per_iteration: int = 256  # start states per batch
    group_size: int = 32  # G: sampled plans per start
    antithetic: bool = True  # draw the group as G/2 mirrored pairs mu +- eps
    epochs: int = 2  # clipped-ratio epochs per batch (GRPO only)
    lr: float = 5e-6  # peak learning rate: linear warm-up, then cosine decay to 10%
    warmup_iterations: int = 10  # (Adam's first steps are large)
    init_std: float = 5e-4  # initial std as a fraction of the control half-range
    min_std: float = 1e-4  # floor of the std (same units)
    std_lr: float = 1e-3  # learning rate of the log-std
    clip: float = 0.2
    kl_coef: float = 1e-3  # weight of KL(policy || frozen cloned policy), per plan
    algo: str = "grpo"  # "grpo" or "reinforce"
    grad_clip: float = 1.0
    eval_every: int = 5
    eval_starts: int = 512  # validation starts (own seed; never the held-out test starts)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algo not in ("grpo", "reinforce"):
            raise ValueError(f"algo must be 'grpo' or 'reinforce', got {self.algo!r}")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative to the group)")
        if self.antithetic and self.group_size % 2:
            raise ValueError("antithetic sampling needs an even group_size")


def group_advantages(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Advantages normalised within each group: ``rewards [B, G] -> [B, G]``, each row with
    mean zero and (unless all equal) unit standard deviation."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)


def gaussian_log_prob(samples: torch.Tensor, mean: torch.Tensor,
                      log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of diagonal Gaussian plans, summed over time and controls:
    ``samples [B, G, N, m]``, ``mean [B, 1, N, m]``, ``log_std [N, m]`` -> ``[B, G]``."""
    z = (samples - mean) / log_std.exp()
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=(-2, -1))


def gaussian_kl(mean: torch.Tensor, log_std: torch.Tensor, ref_mean: torch.Tensor,
                ref_log_std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, std) || N(ref_mean, ref_std))`` per plan: ``[B, N, m] -> [B]``."""
    var, ref_var = (2 * log_std).exp(), (2 * ref_log_std).exp()
    kl = ref_log_std - log_std + (var + (mean - ref_mean).square()) / (2 * ref_var) - 0.5
    return kl.sum(dim=(-2, -1))


class GaussianPlanner(torch.nn.Module):
    """The planner as a stochastic policy: ``mean(x0, x*)`` plus a learnable log-std [N, m]."""

    def __init__(self, policy: TRCPolicy, init_std: float):
        super().__init__()
        self.model = policy.model
        problem = policy.problem
        half = torch.as_tensor((problem.u_high - problem.u_low) / 2, dtype=torch.float32)
        self.register_buffer("u_half", half)
        self.log_std = torch.nn.Parameter(torch.log(init_std * half).expand(
            problem.horizon, problem.n_control).clone())

    def mean(self, x0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The exact gradient of the final plan: through every cycle and the simulated error
        # feedback. Cloning's truncated gradient (last cycle, features as observations) is not
        # a descent direction of the plan's cost near the optimum; with it, policy-gradient
        # steps raised a precise clone's cost on the double integrator at every setting tried.
        return self.model(x0, target, detach_between_steps=False, exact_gradient=True)["controls"]


def finetune(policy: TRCPolicy, config: GRPOConfig | None = None,
             run_dir: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Fine-tune ``policy`` in place; on return it holds the weights with the lowest mean
    cost on the validation starts (the cloned weights if nothing beat them). Returns the
    history (one row per evaluation: iteration, env steps, validation cost and gap, KL, std,
    clip fraction). With ``run_dir`` it writes ``rl_log.csv`` and ``rl_state.pt``."""
    config = config or GRPOConfig()
    problem = policy.problem
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + 7919)  # training starts
    val_rng = np.random.default_rng(config.seed + 104_729)  # validation starts
    val_x0 = problem.sample_initial_states(val_rng, config.eval_starts)
    val_target = problem.sample_targets(val_rng, config.eval_starts)
    val_expert = float(problem.cost(val_x0, val_target,
                                    problem.expert_plan(val_x0, val_target)).mean())

    planner = GaussianPlanner(policy, config.init_std)
    reference = copy.deepcopy(policy.model).eval().requires_grad_(False)
    ref_log_std = planner.log_std.detach().clone()
    min_log_std = torch.log(config.min_std * planner.u_half)
    optimizer = torch.optim.Adam([
        {"params": planner.model.parameters(), "lr": config.lr},
        {"params": [planner.log_std], "lr": config.std_lr},
    ])

    def schedule(i: int) -> float:
        if i < config.warmup_iterations:
            return (i + 1) / config.warmup_iterations
        progress = (i - config.warmup_iterations) / max(1, config.iterations
                                                        - config.warmup_iterations)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def validation_cost() -> float:
        return float(problem.cost(val_x0, val_target, policy.plan(val_x0, val_target)).mean())

    best_cost = validation_cost()
    best_state = copy.deepcopy(policy.model.state_dict())
    history = [{"iteration": 0, "env_steps": 0, "val_cost": best_cost,
                "val_gap": best_cost / val_expert - 1, "kl": 0.0,
                "std": float(planner.log_std.detach().exp().mean()), "clip_fraction": 0.0,
                "seconds": 0.0}]
    if run_dir:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(run_dir) / "rl_log.csv"
        log_path.unlink(missing_ok=True)
        append_row(log_path, history[0])
    writer = tensorboard_writer(run_dir, "rl")
    B, G, N, m = config.starts_per_iteration, config.group_size, problem.horizon, problem.n_control
    env_steps, start_time = 0, time.perf_counter()
    stats = {"kl": 0.0, "clip_fraction": 0.0}
    bar = tqdm(range(1, config.iterations + 1), desc=f"fine-tuning ({config.algo})",
               disable=not progress)
    for iteration in bar:
        x0_np = problem.sample_initial_states(rng, B)
        target_np = problem.sample_targets(rng, B)
        x0 = torch.as_tensor(x0_np, dtype=torch.float32)
        target = torch.as_tensor(target_np, dtype=torch.float32)
        with torch.no_grad():
            mean = planner.mean(x0, target)[:, None]
            noise = torch.randn(B, G // 2 if config.antithetic else G, N, m)
            if config.antithetic:  # mirrored pairs cancel the cost's curvature in the estimate
                noise = torch.cat([noise, -noise], dim=1)
            samples = mean + planner.log_std.exp() * noise
            old_log_prob = gaussian_log_prob(samples, mean, planner.log_std)
            ref_mean = reference(x0, target)["controls"]
        plans = samples.double().numpy().reshape(B * G, N, m)
        costs = problem.cost(np.repeat(x0_np, G, axis=0), np.repeat(target_np, G, axis=0), plans)
        env_steps += B * G * N
        advantages = group_advantages(torch.as_tensor(-costs, dtype=torch.float32).view(B, G))
        planner.train()
        for _ in range(config.epochs if config.algo == "grpo" else 1):
            new_mean = planner.mean(x0, target)
            log_prob = gaussian_log_prob(samples, new_mean[:, None], planner.log_std)
            if config.algo == "grpo":
                ratio = (log_prob - old_log_prob).exp()
                clipped = ratio.clamp(1 - config.clip, 1 + config.clip)
                pg_loss = -torch.minimum(ratio * advantages, clipped * advantages).mean()
                stats["clip_fraction"] = float(((ratio - 1).abs() > config.clip).float().mean())
            else:
                pg_loss = -(log_prob * advantages).mean()
            kl = gaussian_kl(new_mean, planner.log_std, ref_mean, ref_log_std).mean()
            loss = pg_loss + config.kl_coef * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(planner.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                planner.log_std.copy_(torch.maximum(planner.log_std, min_log_std))
            stats["kl"] = float(kl.detach())
        scheduler.step()
        planner.eval()
        if iteration % config.eval_every == 0 or iteration == config.iterations:
            cost = validation_cost()
            row = {"iteration": iteration, "env_steps": env_steps, "val_cost": cost,
                   "val_gap": cost / val_expert - 1, "kl": stats["kl"],
                   "std": float(planner.log_std.detach().exp().mean()),
                   "clip_fraction": stats["clip_fraction"],
                   "seconds": time.perf_counter() - start_time}
            history.append(row)
            if cost < best_cost:
                best_cost, best_state = cost, copy.deepcopy(policy.model.state_dict())
            bar.set_postfix(val_gap=f"{row['val_gap']:+.3%}", kl=f"{row['kl']:.3f}",
                            std=f"{row['std']:.3f}")
            if run_dir:
                append_row(log_path, row)
                if writer:
                    for key, value in row.items():
                        writer.add_scalar(f"rl/{key}", value, env_steps)
                atomic_torch_save({"model": policy.model.state_dict(), "best": best_state,
                                   "log_std": planner.log_std.detach(), "iteration": iteration},
                                  Path(run_dir) / "rl_state.pt")
    bar.close()
    policy.model.load_state_dict(best_state)
    policy.model.eval()
    policy.metadata.update({"rl": asdict(config), "rl_env_steps": env_steps,
                            "rl_val_gap": best_cost / val_expert - 1})
    return history
