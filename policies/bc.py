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

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from policies import distributed
from policies.policy import TRCPolicy
from policies.training import atomic_torch_save, tensorboard_writer, warmup_cosine
from trc_gym.checks import check_choice, check_number
from trc_gym.datasets import Demonstrations
from trc_gym.devices import resolve_device
from trc_gym.evaluation import gap
from trc_gym.files import append_csv_row, read_csv_rows

# Peak learning rates that clone each preset well on the double integrator (docs/sizes.md):
# medium clones to +0.020% at 1e-3 against +0.052% at 5e-4; large trails at 4e-4 and at 1e-4.
PRESET_LR = {"small": 2e-3, "medium": 1e-3, "large": 2e-4}
MPC_VALIDATION_STARTS = 256  # validation episodes of BCConfig.validation = "mpc"


@dataclass
class BCConfig:
    """Behaviour cloning: every default of `train_bc`, ``trc train-bc`` and the main job."""

    epochs: int = 150
    """Passes over the training split (large needs about 300 to match small)."""
    batch_size: int = 128
    """Plans per gradient step."""
    lr: float | None = None
    """Peak learning rate; None: the planner's preset size's (PRESET_LR; small's for custom)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Gradient steps of linear learning-rate warm-up (then cosine decay to 5%)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    ema_decay: float = 0.995
    """Decay of the weights' moving average, which is what is evaluated and kept."""
    cost_weight: float = 1.0
    """Weight of the true-cost term mean(J - J*) / mean J* beside imitation (0: imitation only)."""
    val_fraction: float = 0.1
    """Share of the data held out to pick the best epoch by its gap."""
    patience: int = 40
    """Epochs without a better validation gap before stopping."""
    tail_share: float = 0.5
    """For a planner that reads the time left (TRCConfig.time_left): the share of each batch
    whose demonstration is replaced by its rest from a random step k (1..N-1) of the expert's
    trajectory, for the N - k steps left (optimal for them, as the tail of an optimal plan).
    Drawn afresh every epoch; other planners ignore it."""
    validation: Literal["plan", "mpc"] = "plan"
    """What the validation gap judges: the planner's plans run open loop, or its episodes
    replanning from every state (MPC, on at most `MPC_VALIDATION_STARTS` starts), for an env
    whose headline mode is MPC."""
    seed: int = 0
    """Seed of the split, the batches and the weights."""
    device: str = "auto"
    """Where to train: auto (CUDA where present, else the CPU), cpu, cuda or cuda:K."""

    def __post_init__(self) -> None:
        check_choice(self.validation, "BCConfig.validation", ("plan", "mpc"))
        resolve_device(self.device, "BCConfig.device")
        for key in ("epochs", "batch_size", "patience"):
            check_number(getattr(self, key), f"BCConfig.{key}", minimum=1, integer=True)
        check_number(self.warmup_steps, "BCConfig.warmup_steps", minimum=0, integer=True)
        check_number(self.seed, "BCConfig.seed", minimum=0, integer=True)
        if self.lr is not None:
            check_number(self.lr, "BCConfig.lr", minimum=0, exclusive_minimum=True)
        for key in ("weight_decay", "cost_weight"):
            check_number(getattr(self, key), f"BCConfig.{key}", minimum=0)
        check_number(self.grad_clip, "BCConfig.grad_clip", minimum=0, exclusive_minimum=True)
        check_number(self.ema_decay, "BCConfig.ema_decay", minimum=0, maximum=1)
        check_number(self.val_fraction, "BCConfig.val_fraction", minimum=0,
                     exclusive_minimum=True, maximum=0.9)
        check_number(self.tail_share, "BCConfig.tail_share", minimum=0, maximum=1)


def bc_loss(policy: TRCPolicy, x0: torch.Tensor, target: torch.Tensor, expert: torch.Tensor,
            expert_cost: torch.Tensor, cost_scale: float, cost_weight: float,
            network: torch.nn.Module | None = None,
            steps_left: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Deep-supervision loss summed over iterates; returns it and per-term means (floats).
    The cost term is the batch's excess cost in units of ``cost_scale`` (the data's mean expert
    cost), like the gap it is judged by; a per-plan ratio ``J / J*`` would put most of its
    weight on the starts that are already at the target, where ``J*`` is near zero.
    ``network`` runs the model's forward (its `DistributedDataParallel` wrapper in a process
    group; default: the model itself). With ``steps_left [B]`` (a planner that reads the time
    left) the plans are for the last ``steps_left`` steps, and only those steps count."""
    model = policy.model
    out = (network or model)(x0, target, steps_left=steps_left)
    iterates = out["iterates"]
    target_norm = (expert - model.u_mid) / model.u_half
    mse_total, excess_total = x0.new_zeros(()), x0.new_zeros(())
    chains = out.get("chains")
    counted = None if steps_left is None else policy.problem.counted_steps(steps_left, expert)

    def mse(plans: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
        """Mean squared error in normalised units over ``dims`` (default: all), the steps
        that count only."""
        error = ((plans - model.u_mid) / model.u_half - target_norm).square()
        if counted is None:
            return error.mean() if dims is None else error.mean(dims)
        weight = counted.view(counted.shape[0], *[1] * (error.ndim - 3), -1, 1)
        return (error * weight).sum(dims) / (weight.sum(dims) * error.shape[-1])

    if chains is not None:  # several proposals: only the chain nearest the expert's is cloned
        target_norm = target_norm[:, None]
        errors = sum(mse(plans, (2, 3)) for plans in chains)  # [B, P]
        mse_total = errors.amin(1).mean()
    for controls in iterates:
        if chains is None:
            mse_total = mse_total + mse(controls)
        if cost_weight > 0:
            cost = policy.problem.cost_torch(x0, target, controls, steps_left)
            excess_total = excess_total + (cost - expert_cost).mean() / cost_scale
    loss = (mse_total + cost_weight * excess_total) / len(iterates)
    return loss, {"mse": float(mse_total.detach()) / len(iterates),
                  "excess": float(excess_total.detach()) / len(iterates)}


def plan_tails(states: torch.Tensor, plans: torch.Tensor,
               steps_taken: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rest of each plan ``[B, N, m]`` after ``steps_taken [B]`` (0..N-1) of its
    trajectory ``states [B, N+1, n]``: the state reached ``[B, n]``, the remaining controls
    moved to the front ``[B, N, m]`` (padded with the plan's last control) and the steps left
    ``N - steps_taken``."""
    N, m = plans.shape[1], plans.shape[2]
    reached = states.gather(1, steps_taken[:, None, None].expand(-1, 1, states.shape[2]))
    index = torch.clamp(torch.arange(N, device=plans.device) + steps_taken[:, None], max=N - 1)
    rest = plans.gather(1, index[..., None].expand(-1, -1, m))
    return reached[:, 0], rest, N - steps_taken


def validation_gap(policy: TRCPolicy, data: Demonstrations, mode: str = "plan") -> float:
    """The `trc_gym.evaluation.gap` of the planner to ``data``'s plans: of its own plans run
    open loop (``"plan"``), or of its episodes replanning from every state (``"mpc"``, on the
    first `MPC_VALIDATION_STARTS`); see `TRCPolicy.episode_costs`. In a process group each
    process runs its slice of the starts."""
    if mode == "mpc":
        data = data.subset(np.arange(min(len(data), MPC_VALIDATION_STARTS)))

    def costs(index: np.ndarray) -> np.ndarray:
        return policy.episode_costs(data.initial_states[index], data.target_states[index],
                                    mode == "mpc")

    return gap(distributed.sharded_mean(costs, len(data)), data.costs.mean())


def train_bc(policy: TRCPolicy, data: Demonstrations, config: BCConfig | None = None,
             run_dir: str | Path | None = None, resume: bool = False,
             progress: bool = True) -> list[dict]:
    """Clone ``data`` into ``policy`` in place; on return the policy holds the EMA weights with
    the best validation gap. Returns the per-epoch history. With ``run_dir`` it writes
    ``bc_log.csv`` and ``bc_state.pt`` (resumed from when ``resume``).

    Under torchrun it trains data-parallel (`policies.distributed`): each process takes its
    slice of every batch, and rank 0 alone writes the files."""
    config = config or BCConfig()
    if config.lr is None:
        config = replace(config, lr=PRESET_LR[policy.metadata.get("size", "small")])
    if data.metadata.get("env_id") not in (None, policy.env_id):
        raise ValueError(f"data is for {data.metadata['env_id']!r}, policy for {policy.env_id!r}")
    device = distributed.setup(resolve_device(config.device, "BCConfig.device"))
    policy.to(device)
    main = distributed.is_main()
    torch.manual_seed(config.seed)
    train, val = data.split(1.0 - config.val_fraction, seed=config.seed)
    tensors = [torch.as_tensor(a, dtype=torch.float32, device=device) for a in
               (train.initial_states, train.target_states, train.controls, train.costs)]
    cost_scale = float(train.costs.mean())
    problem, tails = policy.problem, policy.plans_time_left and config.tail_share > 0
    if tails:  # the expert's trajectories, to start the tails of its plans from
        trajectories = torch.as_tensor(problem.rollout(train.initial_states, train.controls),
                                       dtype=torch.float32, device=device)
    model = policy.model.train()
    network = distributed.data_parallel(model, device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    ema.update_parameters(model)  # the first update copies: the average starts at the init
    ema_policy = TRCPolicy(ema.module, policy.env_id, policy.env_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    batches = math.ceil(len(train) / config.batch_size)
    total_steps = config.epochs * batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, total_steps, floor=0.05))
    history: list[dict] = []
    best_gap, best_state, bad_epochs, start_epoch = math.inf, None, 0, 0
    state_path = Path(run_dir) / "bc_state.pt" if run_dir else None
    resumed = resume and state_path is not None and state_path.is_file()
    if resumed:
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best_state = state["best"]
        best_gap, bad_epochs, start_epoch = state["best_gap"], state["bad_epochs"], state["epoch"]
        history = read_csv_rows(Path(run_dir) / "bc_log.csv")
    if not main:
        run_dir = None  # rank 0 writes the files
    elif run_dir and not resumed:  # a new run: its log starts empty, not after earlier rows
        (Path(run_dir) / "bc_log.csv").unlink(missing_ok=True)
    if run_dir:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    writer = tensorboard_writer(run_dir, "bc")
    bar = tqdm(range(start_epoch, config.epochs), desc="behaviour cloning",
               disable=not (progress and main), initial=start_epoch, total=config.epochs)
    for epoch in bar:
        start = time.perf_counter()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
            config.seed * 100_003 + epoch)).to(device)  # drawn on the CPU: the same anywhere
        if tails:  # per demonstration: the steps of its plan this epoch skips (0: none)
            draw = torch.Generator().manual_seed(config.seed * 100_019 + epoch)
            skip = torch.rand(len(train), generator=draw) < config.tail_share
            steps_taken = (torch.randint(1, problem.horizon, (len(train),), generator=draw)
                           * skip).to(device)
        sums = {"loss": 0.0, "mse": 0.0, "excess": 0.0}
        model.train()
        for b in range(batches):
            index, weight = distributed.rank_slice(
                order[b * config.batch_size:(b + 1) * config.batch_size])
            x0, target, plans, costs = (t[index] for t in tensors)
            steps_left = None
            if tails:
                x0, plans, steps_left = plan_tails(trajectories[index], plans,
                                                   steps_taken[index])
                if config.cost_weight > 0:
                    with torch.no_grad():
                        costs = problem.cost_torch(x0, target, plans, steps_left)
            loss, terms = bc_loss(policy, x0, target, plans, costs, cost_scale,
                                  config.cost_weight, network, steps_left)
            optimizer.zero_grad(set_to_none=True)
            (weight * loss).backward()  # in a process group: the whole batch's mean gradient
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)
            sums["loss"] += weight * float(loss.detach())
            sums["mse"] += weight * terms["mse"]
            sums["excess"] += weight * terms["excess"]
        val_gap = validation_gap(ema_policy, val, config.validation)
        row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
               **{f"train_{k}": distributed.all_mean(v) / batches for k, v in sums.items()},
               "val_gap": val_gap, "seconds": time.perf_counter() - start}
        history.append(row)
        if val_gap < best_gap:
            best_gap, bad_epochs = val_gap, 0
            best_state = {k: v.clone() for k, v in ema.module.state_dict().items()}
        else:
            bad_epochs += 1
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_gap=f"{val_gap:+.3%}",
                        best=f"{best_gap:+.3%}")
        if run_dir:
            append_csv_row(Path(run_dir) / "bc_log.csv", row)
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
