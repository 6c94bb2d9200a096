"""TinyRecursiveControl: a tiny recursive planner that writes a whole control sequence and then
refines it by simulating its own plan and reading the errors back.

Following the Tiny Recursive Model (arXiv 2510.04871), the planner keeps two latents: an answer
latent ``y`` (the plan) and a reasoning latent ``z``, each ``L`` tokens of width ``d``. The MLP
reasoning block sees the whole plan as one token (``L = 1``); the attention block attends over
the ``L = N`` time-step tokens. Encoders and decoder read and write ``N / L`` time steps per
token, so both share every other part. One refinement
step is ``T`` cycles of ``n`` latent updates ``z <- f(z + y + x_emb + err_emb)`` and one answer
update ``y <- f(y + z)``, with gradients through the last cycle only; then the control decoder
turns ``y`` into a residual update of the plan. Before each step the current plan is simulated
through the problem's differentiable torch dynamics, and its errors (per-step tracking error,
terminal error, cost terms) are fed back through the error encoder, so the refinement sees the
outcome of its own plan. ``f`` is one network with weights shared across every update.

Shapes: ``x0, target [B, n]`` -> ``controls [B, N, m]``; latents ``[B, L, d]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from trc_gym.checks import check_bool, check_choice, check_number
from trc_gym.problem import ControlProblem

# How training differentiates a plan: TRM's deep-supervision shortcut, or exactly.
GradientMode = Literal["shortcut", "exact"]


@dataclass
class TRCConfig:
    """Sizes and recursion depths of a TRC planner (the problem supplies the dims)."""

    latent_dim: int = 64  # d: width of every token
    hidden_dim: int = 128  # width of the MLPs inside encoders, decoder and reasoning blocks
    n_blocks: int = 2  # blocks in the shared reasoning network f
    reasoning: str = "mlp"  # "mlp" (one token: the whole plan) or "attention" (over time steps)
    n_heads: int = 4  # attention heads (attention block only)
    n_inner: int = 2  # n: latent updates per cycle
    n_cycles: int = 2  # T: cycles per refinement step (gradients through the last only)
    n_refine: int = 3  # K: refinement steps (each decodes, simulates and feeds errors back)
    error_feedback: bool = True  # False: the error encoder sees zeros (ablation)
    cost_gradient: bool = False  # also feed back dJ/du of the simulated plan (slower to learn)
    # Also feed back each state's margin to each hard constraint (ObstacleNav: the clearance to
    # each obstacle), where the problem has them (`ControlProblem.constraint_margins_torch`).
    # Off by default: on ObstacleNav it added 3 points of success to a single-proposal
    # planner's 14% (docs/recipes.md, "ObstacleNav").
    constraint_feedback: bool = False
    # P initial plans, each refined; the final plan of lowest simulated cost is the answer.
    # Where the optimal plans switch between modes (above or below an obstacle), one
    # regression averages them into a plan through the obstacle; P chains, each cloned only
    # where it is the nearest to the expert's (winner takes all, `policies.bc.bc_loss`), keep
    # one mode each.
    n_proposals: int = 1
    # The planner also reads the steps left in the episode and plans for them (its first
    # steps_left controls; the rest are unused): replanning on a problem whose episode ends at
    # a fixed time (landing at step N) plans to arrive at step N, not N steps after the state
    # it replans from (shrinking-horizon MPC, `TRCPolicy` with ``receding_horizon``). Cloned
    # on the tails of the expert's plans, which are optimal for the steps that remain
    # (`policies.bc.BCConfig.tail_share`).
    time_left: bool = False

    def __post_init__(self) -> None:
        check_choice(self.reasoning, "TRCConfig.reasoning", ("mlp", "attention"))
        for key in ("latent_dim", "hidden_dim", "n_blocks", "n_heads", "n_inner", "n_cycles"):
            check_number(getattr(self, key), f"TRCConfig.{key}", minimum=1, integer=True)
        check_number(self.n_refine, "TRCConfig.n_refine", minimum=0, integer=True)
        check_number(self.n_proposals, "TRCConfig.n_proposals", minimum=1, integer=True)
        for key in ("error_feedback", "cost_gradient", "constraint_feedback", "time_left"):
            check_bool(getattr(self, key), f"TRCConfig.{key}")
        if self.reasoning == "attention" and self.latent_dim % self.n_heads:
            raise ValueError(f"TRCConfig.latent_dim ({self.latent_dim}) must be divisible by "
                             f"n_heads ({self.n_heads})")

    @classmethod
    def from_dict(cls, values: Any, name: str = "model config") -> TRCConfig:
        """A config from a mapping of its fields (ValueError naming any unknown one)."""
        if not isinstance(values, dict):
            raise ValueError(f"{name} must be a mapping of TRCConfig fields, got {values!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{name} has unknown field(s) {unknown}; TRCConfig has "
                             f"{sorted(known)}")
        return cls(**values)


# Presets sized to the seed's parameter counts on the double integrator (104,862 / 530,590 /
# 2,604,062); `examples/benchmark_bc.py` prints the counts.
PRESETS: dict[str, TRCConfig] = {
    "small": TRCConfig(latent_dim=64, hidden_dim=192, n_blocks=1),  # 105,054
    "medium": TRCConfig(latent_dim=128, hidden_dim=448, n_blocks=2),  # 532,510
    "large": TRCConfig(latent_dim=320, hidden_dim=768, n_blocks=3),  # 2,586,654
}


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    # SiLU and LayerNorm rather than GELU and RMSNorm: the same role, but single fused kernels,
    # several times faster at batch 1, where a plan's latency is set by per-op overhead.
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


class ReasoningBlock(nn.Module):
    """A residual channel MLP, preceded (attention block) by self-attention over the tokens;
    post-norm as in TRM (LayerNorm, see `mlp`)."""

    def __init__(self, config: TRCConfig):
        super().__init__()
        d = config.latent_dim
        self.attention = None
        if config.reasoning == "attention":
            self.attention = nn.MultiheadAttention(d, config.n_heads, batch_first=True)
            self.norm_attention = nn.LayerNorm(d)
        self.channel = mlp(d, config.hidden_dim, d)
        self.norm_channel = nn.LayerNorm(d)

    def forward(self, h: Tensor) -> Tensor:
        if self.attention is not None:
            h = self.norm_attention(h + self.attention(h, h, h, need_weights=False)[0])
        return self.norm_channel(h + self.channel(h))


class RecursiveReasoning(nn.Module):
    """The shared network ``f`` and the TRM cycle that applies it."""

    def __init__(self, config: TRCConfig):
        super().__init__()
        self.blocks = nn.Sequential(*(ReasoningBlock(config) for _ in range(config.n_blocks)))
        self.n_inner = config.n_inner

    def cycle(self, y: Tensor, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """``n`` updates of the reasoning latent, then one of the answer latent."""
        for _ in range(self.n_inner):
            z = self.blocks(z + y + context)
        y = self.blocks(y + z)
        return y, z


class TinyRecursiveControl(nn.Module):
    """The TRC planner for one problem. ``model(x0, target)`` returns ``{"controls": U [B, N, m],
    "iterates": [U_0, ..., U_K]}``: the initial generator's plan and each refinement's. With
    ``P = n_proposals > 1`` the initial generator writes P plans, each refined on its own, and
    the iterates are those of the one whose final plan costs least; ``"chains"`` then holds
    every proposal's iterates ``[B, P, N, m]``."""

    def __init__(self, problem: ControlProblem, config: TRCConfig | None = None):
        super().__init__()
        self.problem = problem
        self.config = config = config or TRCConfig()
        n, m, N, d = problem.n_state, problem.n_control, problem.horizon, config.latent_dim
        state_scale = np.maximum(np.abs(problem.state_low), np.abs(problem.state_high))
        self.register_buffer("state_scale", torch.tensor(np.maximum(state_scale, 1e-3),
                                                         dtype=torch.float32))
        self.register_buffer("u_mid", torch.tensor((problem.u_high + problem.u_low) / 2,
                                                   dtype=torch.float32))
        self.register_buffer("u_half", torch.tensor((problem.u_high - problem.u_low) / 2,
                                                    dtype=torch.float32))
        self.tokens = N if config.reasoning == "attention" else 1  # L
        steps_per_token = N // self.tokens
        n_read = n + len(problem.angle_indices)  # a state as read: `periodic_features`
        self.state_encoder = mlp(3 * n_read + config.time_left, config.hidden_dim, d)
        self.token_embedding = nn.Parameter(0.02 * torch.randn(self.tokens, d))
        self.initial_generator = mlp(d, config.hidden_dim, config.n_proposals * N * m)
        margins = problem.constraint_margins_torch(torch.zeros(1, n)) \
            if config.constraint_feedback else None
        self.n_margins = 0 if margins is None else margins.shape[-1]
        n_features = 2 * n_read + (2 * m if config.cost_gradient else m) + 3 + self.n_margins
        self.error_encoder = mlp(steps_per_token * n_features, config.hidden_dim, d)
        self.reasoning = RecursiveReasoning(config)
        self.control_decoder = mlp(d, config.hidden_dim, steps_per_token * m)
        # Fixed, as in TRM: with T >= 2 the first cycles run without gradients, so a learned
        # initial reasoning latent would never receive one.
        self.register_buffer("z_init", torch.randn(d) / d**0.5)

    # ------------------------------------------------------------------ pieces
    def squash(self, pre: Tensor) -> Tensor:
        """Plan in physical units, inside the bound by construction. The tanh is stretched by
        5% and clamped so that the bound itself (where optimal plans often sit) is reachable."""
        return self.u_mid + self.u_half * torch.clamp(1.05 * torch.tanh(pre), -1.0, 1.0)

    def encode_state(self, x0: Tensor, target: Tensor,
                     steps_left: Tensor | None = None) -> Tensor:
        """The start, the target and the error between them, as `read`, and (``time_left``)
        the share of the horizon left, ``steps_left [B] / N``."""
        error = self.problem.state_error(x0, target)
        read = [self.read(x) for x in (x0, target, error)]
        if steps_left is not None:
            read.append((steps_left / self.problem.horizon).to(x0.dtype)[:, None])
        return self.state_encoder(torch.cat(read, -1))

    def read(self, x: Tensor) -> Tensor:
        """A state or state error as the networks read it: scaled by the state box, angles as
        their sine and cosine (`ControlProblem.periodic_features`), so that nothing read jumps
        where an angle wraps at +-pi."""
        return self.problem.periodic_features(x, self.state_scale)

    def simulate(self, x0: Tensor, target: Tensor, controls: Tensor,
                 gradient: GradientMode, steps_left: Tensor | None = None) -> dict[str, Tensor]:
        """Roll ``controls [B, N, m]`` out through the problem: ``states [B, N+1, n]``, the cost
        terms of `ControlProblem.cost_terms_torch`, the ``total`` cost ``[B]``, the ``plan``
        simulated and (``cost_gradient``) ``dJ/du [B, N, m]`` by backpropagation. With the
        ``"shortcut"`` gradient the outcome is an observation of the plan (no gradient flows
        back through it); with ``"exact"`` it is differentiable in the plan and the start.
        With ``steps_left [B]`` the plans are for the time left: the states are held after
        ``steps_left`` steps (`ControlProblem.hold_after`), the later stages cost nothing, and
        ``counted [B, N]`` marks the steps that remain."""
        exact = gradient == "exact"
        plan = controls if exact else controls.detach()
        start = x0 if exact else x0.detach()
        if not self.config.cost_gradient:
            return self._outcome(start, target, plan, steps_left)
        if not plan.requires_grad:  # dJ/du is taken even where nothing else is differentiated
            plan = plan.detach().requires_grad_()
        with torch.enable_grad():
            outcome = self._outcome(start, target, plan, steps_left)
            cost_gradient = torch.autograd.grad(outcome["total"].sum(), plan,
                                                create_graph=exact)[0]
        out = {**outcome, "cost_gradient": cost_gradient}
        return out if exact else {k: v.detach() for k, v in out.items()}

    def _outcome(self, x0: Tensor, target: Tensor, plan: Tensor,
                 steps_left: Tensor | None) -> dict[str, Tensor]:
        problem = self.problem
        states = problem.rollout_torch(x0, plan)
        if steps_left is None:
            terms = problem.cost_terms_torch(states, target, plan)
            total = terms["state"].sum(1) + terms["control"].sum(1) + terms["terminal"]
            return {"plan": plan, "states": states, "total": total, **terms}
        states = problem.hold_after(states, steps_left)
        counted = problem.counted_steps(steps_left, plan)
        terms = problem.cost_terms_torch(states, target, plan)
        terms["state"], terms["control"] = terms["state"] * counted, terms["control"] * counted
        total = terms["state"].sum(1) + terms["control"].sum(1) + terms["terminal"]
        return {"plan": plan, "states": states, "total": total, "counted": counted, **terms}

    def error_features(self, target: Tensor, outcome: dict[str, Tensor]) -> Tensor:
        """The outcome of `simulate` per time step ``[B, N, F]``: tracking error after the
        step, terminal error, the control, the step's state and control cost, the plan's total
        cost, (``cost_gradient``) the sensitivity of the total cost to each control, and
        (``constraint_feedback``) the margin after the step to each hard constraint. Errors
        are `read`, costs log-compressed, the sensitivity made relative to the
        total cost."""
        plan, total = outcome["plan"], outcome["total"]
        errors = self.read(self.problem.state_error(outcome["states"], target[:, None]))
        N = plan.shape[1]
        features = [
            errors[:, 1:],
            errors[:, -1:].expand(-1, N, -1),
            (plan - self.u_mid) / self.u_half,
            torch.log1p(outcome["state"])[..., None],
            torch.log1p(outcome["control"])[..., None],
            torch.log1p(total)[:, None, None].expand(-1, N, 1),
        ]
        if self.config.cost_gradient:
            features.append(outcome["cost_gradient"] * self.u_half / (1.0 + total)[:, None, None])
        if self.n_margins:  # capped: a boundary more than 1 unit away reads as far
            margins = self.problem.constraint_margins_torch(outcome["states"][:, 1:])
            features.append(torch.clamp(margins, max=1.0))
        features = torch.cat(features, dim=-1)
        if "counted" in outcome:  # the steps after the episode's end read as nothing
            features = features * outcome["counted"][..., None]
        return features

    # ------------------------------------------------------------------ forward
    def forward(self, x0: Tensor, target: Tensor, n_refine: int | None = None,
                gradient: GradientMode = "shortcut",
                steps_left: Tensor | None = None) -> dict[str, Tensor | list[Tensor]]:
        """Plan from ``x0 [B, n]`` to ``target [B, n]``; a planner with ``time_left`` plans
        for the last ``steps_left [B]`` (int, 1..N; default N) steps of the episode.
        ``gradient`` is how training differentiates the plans (the plans themselves are the
        same either way):

        - ``"shortcut"`` (behaviour cloning): TRM's deep supervision: the carry is detached
          between refinement steps, so each step learns from its own loss; gradients flow
          through the last cycle of each step only, and the simulated errors are observations;
        - ``"exact"`` (fine-tuning by policy gradient): through every cycle, step and
          simulation: the true gradient of the final plan.
        """
        cfg = self.config
        exact = gradient == "exact"
        if gradient not in ("shortcut", "exact"):
            raise ValueError(f"gradient must be 'shortcut' or 'exact', got {gradient!r}")
        n_refine = cfg.n_refine if n_refine is None else n_refine
        B, N, m = x0.shape[0], self.problem.horizon, self.problem.n_control
        L, P = self.tokens, cfg.n_proposals
        if cfg.time_left:
            steps_left = torch.full((B,), N, device=x0.device) if steps_left is None \
                else steps_left.to(x0.device, torch.int64)
        elif steps_left is not None:
            raise ValueError("steps_left given to a planner without time_left")
        x_emb = self.encode_state(x0, target, steps_left)
        # The P proposals of start b are rows b P .. b P + P - 1 of every chain.
        pre = self.initial_generator(x_emb).view(B * P, N, m)
        if P > 1:
            x0, target, x_emb = (t.repeat_interleave(P, 0) for t in (x0, target, x_emb))
            if steps_left is not None:
                steps_left = steps_left.repeat_interleave(P, 0)
        context = x_emb[:, None, :] + self.token_embedding  # [B P, L, d]
        controls = self.squash(pre)
        chains = [controls]
        y, z = context, self.z_init.expand(B * P, L, -1)
        for _ in range(n_refine):
            if not exact:
                y, z, pre, controls = y.detach(), z.detach(), pre.detach(), controls.detach()
            feedback = self.error_features(
                target, self.simulate(x0, target, controls, gradient, steps_left))
            if not cfg.error_feedback:
                feedback = torch.zeros_like(feedback)
            step_context = context + self.error_encoder(feedback.reshape(B * P, L, -1))
            with torch.set_grad_enabled(exact and torch.is_grad_enabled()):
                for _ in range(cfg.n_cycles - 1):
                    y, z = self.reasoning.cycle(y, z, step_context)
            y, z = self.reasoning.cycle(y, z, step_context)
            pre = pre + self.control_decoder(y).reshape(B * P, N, m)
            controls = self.squash(pre)
            chains.append(controls)
        if P == 1:
            return {"controls": controls, "iterates": chains}
        with torch.no_grad():  # the refined plan of lowest cost wins
            cost = self.problem.cost_torch(x0, target, controls.detach(),
                                           steps_left).view(B, P)
        chains = [plans.view(B, P, N, m) for plans in chains]
        rows = torch.arange(B, device=cost.device)
        iterates = [plans[rows, cost.argmin(1)] for plans in chains]
        return {"controls": iterates[-1], "iterates": iterates, "chains": chains}

    # ------------------------------------------------------------------ sizes
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (and ``total``)."""
        parts = {"state_encoder": [self.state_encoder, self.token_embedding],
                 "error_encoder": [self.error_encoder],
                 "recursive_reasoning": [self.reasoning],
                 "control_decoder": [self.control_decoder],
                 "initial_generator": [self.initial_generator]}
        counts = {}
        for name, items in parts.items():
            counts[name] = sum(p.numel() for item in items for p in
                               (item.parameters() if isinstance(item, nn.Module) else [item]))
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    @classmethod
    def from_preset(cls, problem: ControlProblem, size: str, **overrides) -> TinyRecursiveControl:
        if size not in PRESETS:
            raise ValueError(f"unknown size {size!r}; choose from {sorted(PRESETS)}")
        return cls(problem, TRCConfig.from_dict({**asdict(PRESETS[size]), **overrides}))

    @classmethod
    def create_small(cls, problem: ControlProblem, **overrides) -> TinyRecursiveControl:
        return cls.from_preset(problem, "small", **overrides)

    @classmethod
    def create_medium(cls, problem: ControlProblem, **overrides) -> TinyRecursiveControl:
        return cls.from_preset(problem, "medium", **overrides)

    @classmethod
    def create_large(cls, problem: ControlProblem, **overrides) -> TinyRecursiveControl:
        return cls.from_preset(problem, "large", **overrides)
