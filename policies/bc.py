"""Behaviour cloning of expert plans into a TRC planner.

Deep supervision: every refinement iterate gets the loss (the carry is detached between steps
inside the model while training), the loss being the squared error to the expert's plan in
normalised units plus, optionally, the plan's true cost through the differentiable dynamics as an
excess over the expert's, ``mean(J(U) - J*) / mean J*`` (the validation gap's own form, zero only
at the optimum). AdamW with warm-up and a cosine schedule, gradient clipping, an EMA of the
weights for evaluation, early stopping on the validation cost gap; logs to CSV (and TensorBoard
if installed); resumable from the state written after every epoch; the same seed gives the same
weights.
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
from policies.run_log import append_row, read_rows, tensorboard_writer
from trc_gym.datasets import Demonstrations

# Peak learning rates that clone each preset well (double integrator, 150 epochs, README's
# benchmark): medium +0.020% at 1e-3 against +0.052% at 5e-4; large at 4e-4 and at 1e-4
# trailed 2e-4 (validation gap 1.2% against 0.5% at epoch 50; 0.22% against 0.21% at 88).
# Large needs a longer schedule than small: +0.047% at 150 epochs, +0.004% at 300.
PRESET_LR = {"small": 2e-3, "medium": 1e-3, "large": 2e-4}


@dataclass
class BCConfig:
    epochs: int = 150
    batch_size: int = 128
    lr: float = PRESET_LR["small"]
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    cost_weight: float = 1.0  # weight of the true-cost term mean(J - J*) / mean J* (0: imitation)
    val_fraction: float = 0.1
    patience: int = 40  # epochs without a better validation gap before stopping
    seed: int = 0


def bc_loss(policy: TRCPolicy, x0: torch.Tensor, target: torch.Tensor, expert: torch.Tensor,
            expert_cost: torch.Tensor, cost_scale: float,
            cost_weight: float) -> tuple[torch.Tensor, dict]:
    """Deep-supervision loss summed over iterates; returns it and per-term means (floats).
    The cost term is the batch's excess cost in units of ``cost_scale`` (the data's mean expert
    cost), like the gap it is judged by; a per-plan ratio ``J / J*`` would put most of its
    weight on the starts that are already at the target, where ``J*`` is near zero."""
    model = policy.model
    iterates = model(x0, target)["iterates"]
    target_norm = (expert - model.u_mid) / model.u_half
    mse_total, excess_total = torch.zeros(()), torch.zeros(())
    for controls in iterates:
        mse_total = mse_total + ((controls - model.u_mid) / model.u_half
                                 - target_norm).square().mean()
        if cost_weight > 0:
            cost = policy.problem.cost_torch(x0, target, controls)
            excess_total = excess_total + (cost - expert_cost).mean() / cost_scale
    loss = (mse_total + cost_weight * excess_total) / len(iterates)
    return loss, {"mse": float(mse_total.detach()) / len(iterates),
                  "excess": float(excess_total.detach()) / len(iterates)}


def validation_gap(policy: TRCPolicy, data: Demonstrations) -> float:
    """``mean J(plan) / mean J* - 1`` on ``data`` (float64 costs)."""
    controls = policy.plan(data.initial_states, data.target_states)
    costs = policy.problem.cost(data.initial_states, data.target_states, controls)
    return float(costs.mean() / data.costs.mean() - 1.0)


def train_bc(policy: TRCPolicy, data: Demonstrations, config: BCConfig | None = None,
             run_dir: str | Path | None = None, resume: bool = False,
             progress: bool = True) -> list[dict]:
    """Clone ``data`` into ``policy`` in place; on return the policy holds the EMA weights with
    the best validation gap. Returns the per-epoch history. With ``run_dir`` it writes
    ``bc_log.csv`` and ``bc_state.pt`` (resumed from when ``resume``)."""
    config = config or BCConfig()
    if data.metadata.get("env_id") not in (None, policy.env_id):
        raise ValueError(f"data is for {data.metadata['env_id']!r}, policy for {policy.env_id!r}")
    torch.manual_seed(config.seed)
    train, val = data.split(1.0 - config.val_fraction, seed=config.seed)
    tensors = [torch.as_tensor(a, dtype=torch.float32) for a in
               (train.initial_states, train.target_states, train.controls, train.costs)]
    cost_scale = float(train.costs.mean())
    model = policy.model.train()
    ema = copy.deepcopy(model).eval()
    ema_policy = TRCPolicy(ema, policy.env_id, policy.env_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    batches = math.ceil(len(train) / config.batch_size)
    total_steps = config.epochs * batches

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_ = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict] = []
    best_gap, best_state, bad_epochs, start_epoch = math.inf, None, 0, 0
    state_path = Path(run_dir) / "bc_state.pt" if run_dir else None
    if resume and state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best_state = state["best"]
        best_gap, bad_epochs, start_epoch = state["best_gap"], state["bad_epochs"], state["epoch"]
        history = read_rows(Path(run_dir) / "bc_log.csv")
    elif run_dir:  # a new run: its log starts empty, not after an earlier run's rows
        (Path(run_dir) / "bc_log.csv").unlink(missing_ok=True)
    if run_dir:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    writer = tensorboard_writer(run_dir, "bc")
    bar = tqdm(range(start_epoch, config.epochs), desc="behaviour cloning", disable=not progress,
               initial=start_epoch, total=config.epochs)
    for epoch in bar:
        start = time.perf_counter()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
            config.seed * 100_003 + epoch))
        sums = {"loss": 0.0, "mse": 0.0, "excess": 0.0}
        model.train()
        for b in range(batches):
            index = order[b * config.batch_size:(b + 1) * config.batch_size]
            loss, terms = bc_loss(policy, *(t[index] for t in tensors), cost_scale,
                                  config.cost_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()),
                                     1.0 - config.ema_decay)
            sums["loss"] += float(loss.detach())
            sums["mse"] += terms["mse"]
            sums["excess"] += terms["excess"]
        gap = validation_gap(ema_policy, val)
        row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
               **{f"train_{k}": v / batches for k, v in sums.items()},
               "val_gap": gap, "seconds": time.perf_counter() - start}
        history.append(row)
        if gap < best_gap:
            best_gap, bad_epochs = gap, 0
            best_state = {k: v.clone() for k, v in ema.state_dict().items()}
        else:
            bad_epochs += 1
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_gap=f"{gap:+.3%}",
                        best=f"{best_gap:+.3%}")
        if run_dir:
            append_row(Path(run_dir) / "bc_log.csv", row)
            if writer:
                for key, value in row.items():
                    writer.add_scalar(f"bc/{key}", value, epoch + 1)
            atomic_torch_save({"model": model.state_dict(), "ema": ema.state_dict(),
                               "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "best": best_state,
                               "best_gap": best_gap, "bad_epochs": bad_epochs,
                               "epoch": epoch + 1}, state_path)
        if bad_epochs >= config.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    policy.metadata.update({"bc": asdict(config), "bc_val_gap": best_gap,
                            "bc_epochs": len(history), "bc_expert_solves": len(data)})
    return history


def evaluate_iterates(policy: TRCPolicy, x0: np.ndarray, target: np.ndarray) -> list[float]:
    """Mean cost of each refinement iterate's plans on ``x0, target [B, n]``."""
    return [float(policy.problem.cost(x0, target, plan).mean())
            for plan in policy.iterates(x0, target)]
