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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.distributions import Normal, kl_divergence
from tqdm.auto import tqdm

from policies import distributed
from policies.bc import MPC_VALIDATION_STARTS
from policies.policy import TRCPolicy
from policies.training import atomic_torch_save, tensorboard_writer, warmup_cosine
from trc_gym.checks import check_bool, check_choice, check_number
from trc_gym.devices import resolve_device
from trc_gym.evaluation import expert_costs, gap, held_out_starts
from trc_gym.files import append_csv_row


@dataclass
class GRPOConfig:
    """Fine-tuning: every default of `finetune`, ``trc finetune`` and the main job."""

    iterations: int = 100
    """Batches of sampled plans (each one policy update)."""
    starts_per_iteration: int = 256
    """Start states per batch."""
    group_size: int = 32
    """G: sampled plans per start (advantages are relative within the group)."""
    antithetic: bool = True
    """Draw the group as G/2 mirrored pairs mu +- eps."""
    epochs: int = 2
    """Clipped-ratio epochs per batch (GRPO only)."""
    lr: float = 5e-6
    """Peak learning rate: linear warm-up, then cosine decay to 10%."""
    warmup_iterations: int = 10
    """Iterations of warm-up (Adam's first steps are large)."""
    init_std: float = 5e-4
    """Initial std, as a fraction of the control half-range."""
    min_std: float = 1e-4
    """Floor of the std (same units)."""
    std_lr: float = 1e-3
    """Learning rate of the log-std."""
    clip: float = 0.2
    """Ratio clip of the GRPO objective."""
    kl_coef: float = 1e-3
    """Weight of KL(policy || frozen cloned policy), per plan."""
    algo: Literal["grpo", "reinforce"] = "grpo"
    """GRPO (clipped ratio, several epochs) or plain REINFORCE with the group baseline."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    eval_every: int = 5
    """Iterations between validations (the best validated planner is kept)."""
    eval_starts: int = 512
    """Validation starts (their own seed; never the held-out test starts)."""
    seed: int = 0
    """Seed of the sampled starts and plans."""
    validation: Literal["plan", "mpc"] = "plan"
    """What the kept planner is judged by: its plans run open loop, or its episodes replanning
    from every state (MPC, on the first `MPC_VALIDATION_STARTS` validation starts)."""
    device: str = "auto"
    """Where to train and simulate: auto (CUDA where present, else the CPU), cpu, cuda or
    cuda:K."""

    def __post_init__(self) -> None:
        check_choice(self.algo, "GRPOConfig.algo", ("grpo", "reinforce"))
        resolve_device(self.device, "GRPOConfig.device")
        check_choice(self.validation, "GRPOConfig.validation", ("plan", "mpc"))
        check_bool(self.antithetic, "GRPOConfig.antithetic")
        for key in ("iterations", "starts_per_iteration", "epochs", "eval_every", "eval_starts"):
            check_number(getattr(self, key), f"GRPOConfig.{key}", minimum=1, integer=True)
        check_number(self.warmup_iterations, "GRPOConfig.warmup_iterations", minimum=0,
                     integer=True)
        check_number(self.group_size, "GRPOConfig.group_size (advantages are relative to the "
                     "group)", minimum=2, integer=True)
        if self.antithetic and self.group_size % 2:
            raise ValueError("GRPOConfig.group_size must be even with antithetic sampling, got "
                             f"{self.group_size}")
        check_number(self.seed, "GRPOConfig.seed", minimum=0, integer=True)
        for key in ("lr", "init_std", "min_std", "std_lr", "clip", "grad_clip"):
            check_number(getattr(self, key), f"GRPOConfig.{key}", minimum=0,
                         exclusive_minimum=True)
        check_number(self.kl_coef, "GRPOConfig.kl_coef", minimum=0)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Advantages normalised within each group: ``rewards [B, G] -> [B, G]``, each row with
    mean zero and (unless all equal) unit standard deviation."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)


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

    def distribution(self, mean: torch.Tensor) -> Normal:
        """The diagonal Gaussian over plans around ``mean [..., N, m]``."""
        return Normal(mean, self.log_std.exp())

    def forward(self, x0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean plan ``[B, N, m]`` (what `DistributedDataParallel` wraps)."""
        return self.mean(x0, target)

    def mean(self, x0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The exact gradient of the final plan: through every cycle and the simulated error
        # feedback. Cloning's truncated gradient (last cycle, features as observations) is not
        # a descent direction of the plan's cost near the optimum; with it, policy-gradient
        # steps raised a precise clone's cost on the double integrator at every setting tried.
        return self.model(x0, target, gradient="exact")["controls"]


def finetune(policy: TRCPolicy, config: GRPOConfig | None = None,
             run_dir: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Fine-tune ``policy`` in place; on return it holds the weights with the lowest mean
    cost on the validation starts (the cloned weights if nothing beat them). Returns the
    history (one row per evaluation: iteration, env steps, validation cost and gap, KL, std,
    clip fraction). With ``run_dir`` it writes ``rl_log.csv`` and ``rl_state.pt``.

    Under torchrun it trains data-parallel (`policies.distributed`): each process samples and
    simulates the groups of its slice of every iteration's starts, and rank 0 alone writes the
    files."""
    config = config or GRPOConfig()
    problem = policy.problem
    device = distributed.setup(resolve_device(config.device, "GRPOConfig.device"))
    policy.to(device)
    if not distributed.is_main():
        run_dir, progress = None, False  # rank 0 writes the files
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + 7919)  # training starts
    val_seed = config.seed + 104_729  # validation starts, disjoint from the test starts
    val_starts = (min(config.eval_starts, MPC_VALIDATION_STARTS) if config.validation == "mpc"
                  else config.eval_starts)
    val_x0, val_target = held_out_starts(policy.env_id, val_starts, val_seed, policy.env_kwargs)
    val_expert = float(expert_costs(policy.env_id, val_starts, val_seed,
                                    policy.env_kwargs).mean())

    planner = GaussianPlanner(policy, config.init_std).to(device)
    network = distributed.data_parallel(planner, device)
    reference = copy.deepcopy(policy.model).eval().requires_grad_(False)
    ref_log_std = planner.log_std.detach().clone()
    min_log_std = torch.log(config.min_std * planner.u_half)
    optimizer = torch.optim.Adam([
        {"params": planner.model.parameters(), "lr": config.lr},
        {"params": [planner.log_std], "lr": config.std_lr},
    ])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_iterations, config.iterations, floor=0.1))

    def validation_cost() -> float:
        return distributed.sharded_mean(lambda index: policy.episode_costs(
            val_x0[index], val_target[index], config.validation == "mpc"), len(val_x0))

    best_cost = validation_cost()
    best_state = copy.deepcopy(policy.model.state_dict())
    history = [{"iteration": 0, "env_steps": 0, "val_cost": best_cost,
                "val_gap": gap(best_cost, val_expert), "kl": 0.0,
                "std": float(planner.log_std.detach().exp().mean()), "clip_fraction": 0.0,
                "seconds": 0.0}]
    if run_dir:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(run_dir) / "rl_log.csv"
        log_path.unlink(missing_ok=True)
        append_csv_row(log_path, history[0])
    writer = tensorboard_writer(run_dir, "rl")
    B, G, N, m = config.starts_per_iteration, config.group_size, problem.horizon, problem.n_control
    env_steps, start_time = 0, time.perf_counter()
    stats = {"kl": 0.0, "clip_fraction": 0.0}
    bar = tqdm(range(1, config.iterations + 1), desc=f"fine-tuning ({config.algo})",
               disable=not progress)
    for iteration in bar:
        # Every process draws every start and all noise (on the CPU: the same plans on every
        # device), then takes its slice of the starts.
        x0_np = problem.sample_initial_states(rng, B)
        target_np = problem.sample_targets(rng, B)
        noise = torch.randn(B, G // 2 if config.antithetic else G, N, m)
        part, weight = distributed.rank_slice(torch.arange(B))
        x0_np, target_np, noise = x0_np[part.numpy()], target_np[part.numpy()], noise[part]
        x0 = torch.as_tensor(x0_np, dtype=torch.float32, device=device)
        target = torch.as_tensor(target_np, dtype=torch.float32, device=device)
        with torch.no_grad():
            mean = planner.mean(x0, target)[:, None]
            noise = noise.to(device)
            if config.antithetic:  # mirrored pairs cancel the cost's curvature in the estimate
                noise = torch.cat([noise, -noise], dim=1)
            samples = mean + planner.log_std.exp() * noise
            old_log_prob = planner.distribution(mean).log_prob(samples).sum(dim=(-2, -1))
            ref_mean = reference(x0, target)["controls"]
            if not torch.isfinite(samples).all():
                raise ValueError("fine-tuning diverged: the sampled plans contain NaN or inf "
                                 "(try a lower GRPOConfig.lr)")
            # Every plan's cost in float64 through the batched simulator, where the model is.
            repeat = [torch.as_tensor(np.repeat(a, G, axis=0), device=device)
                      for a in (x0_np, target_np)]
            costs = problem.cost_torch(*repeat, samples.double().reshape(len(part) * G, N, m))
        env_steps += B * G * N
        advantages = group_advantages(-costs.float().view(len(part), G))
        planner.train()
        for _ in range(config.epochs if config.algo == "grpo" else 1):
            new_mean = network(x0, target)
            log_prob = planner.distribution(new_mean[:, None]).log_prob(samples).sum(
                dim=(-2, -1))
            if config.algo == "grpo":
                ratio = (log_prob - old_log_prob).exp()
                clipped = ratio.clamp(1 - config.clip, 1 + config.clip)
                pg_loss = -torch.minimum(ratio * advantages, clipped * advantages).mean()
                clipped_share = float(((ratio - 1).abs() > config.clip).float().mean())
                stats["clip_fraction"] = distributed.all_mean(weight * clipped_share)
            else:
                pg_loss = -(log_prob * advantages).mean()
            kl = kl_divergence(planner.distribution(new_mean),
                               Normal(ref_mean, ref_log_std.exp())).sum(dim=(-2, -1)).mean()
            loss = pg_loss + config.kl_coef * kl
            optimizer.zero_grad(set_to_none=True)
            (weight * loss).backward()  # in a process group: the whole batch's mean gradient
            torch.nn.utils.clip_grad_norm_(planner.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                planner.log_std.copy_(torch.maximum(planner.log_std, min_log_std))
            stats["kl"] = distributed.all_mean(weight * float(kl.detach()))
        scheduler.step()
        planner.eval()
        if iteration % config.eval_every == 0 or iteration == config.iterations:
            cost = validation_cost()
            row = {"iteration": iteration, "env_steps": env_steps, "val_cost": cost,
                   "val_gap": gap(cost, val_expert), "kl": stats["kl"],
                   "std": float(planner.log_std.detach().exp().mean()),
                   "clip_fraction": stats["clip_fraction"],
                   "seconds": time.perf_counter() - start_time}
            history.append(row)
            if cost < best_cost:
                best_cost, best_state = cost, copy.deepcopy(policy.model.state_dict())
            bar.set_postfix(val_gap=f"{row['val_gap']:+.3%}", kl=f"{row['kl']:.3f}",
                            std=f"{row['std']:.3f}")
            if run_dir:
                append_csv_row(log_path, row)
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
                            "rl_val_gap": gap(best_cost, val_expert)})
    return history
