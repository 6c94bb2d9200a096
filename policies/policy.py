"""`TRCPolicy`: a trained TRC planner behind the shared policy face, and its checkpoints.

A checkpoint is one ``torch.save`` file holding only tensors and strings (loadable with
``weights_only=True``, so loading never runs code): the model's state dict and a JSON config
(env id and kwargs, model config, and free-form training metadata). Files are written to a
temp file in the same folder and renamed, so no half-written checkpoint is ever left behind.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from policies.model import TinyRecursiveControl, TRCConfig
from trc_gym.atomic import atomic_write
from trc_gym.envs import make_problem
from trc_gym.planning_policy import PlanningPolicy

FORMAT = "trc-policy-v1"


class TRCPolicy(PlanningPolicy):
    """A TRC planner for one env: ``plan`` (batched numpy) and SB3-style ``predict``."""

    def __init__(self, model: TinyRecursiveControl, env_id: str, env_kwargs: dict | None = None,
                 receding_horizon: bool = False, metadata: dict | None = None):
        super().__init__(model.problem, receding_horizon)
        self.model = model.eval()
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.metadata = dict(metadata or {})

    @classmethod
    def create(cls, env_id: str, size: str = "small", env_kwargs: dict | None = None,
               **overrides) -> TRCPolicy:
        """An untrained planner of a preset size for ``env_id``."""
        problem = make_problem(env_id, **(env_kwargs or {}))
        return cls(TinyRecursiveControl.from_preset(problem, size, **overrides), env_id,
                   env_kwargs)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def plan(self, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Plans ``U [B, N, m]`` (float64, inside the bound) from ``x0, target [B, n]``."""
        return self._forward(x0, target)["controls"].double().numpy()

    def iterates(self, x0: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """Every refinement iterate's plans ``[B, N, m]``: the initial plan first, the final
        plan (what `plan` returns) last."""
        return [u.double().numpy() for u in self._forward(x0, target)["iterates"]]

    def _forward(self, x0: np.ndarray, target: np.ndarray) -> dict:
        x0 = self.problem.check_states(x0, "x0")
        target = self.problem.check_states(target, "target", batch=len(x0))
        if self.model.training:  # eval() walks every submodule: a cost at batch 1
            self.model.eval()
        # Inference mode is no_grad without autograd's bookkeeping; a cost-gradient model
        # differentiates its own simulation inside, which inference tensors forbid.
        with torch.inference_mode(not self.model.config.cost_gradient), torch.no_grad():
            return self.model(torch.as_tensor(x0, dtype=torch.float32),
                              torch.as_tensor(target, dtype=torch.float32))

    # ------------------------------------------------------------------ files
    def config_dict(self) -> dict:
        return {"format": FORMAT, "env_id": self.env_id, "env_kwargs": self.env_kwargs,
                "model": asdict(self.model.config), "metadata": self.metadata}

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically; returns its path."""
        payload = {"config": json.dumps(self.config_dict()),
                   "state_dict": self.model.state_dict()}
        return atomic_torch_save(payload, path)


def atomic_torch_save(payload: dict, path: str | Path) -> Path:
    """``torch.save`` written atomically (see `trc_gym.atomic`)."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Read a file written by `atomic_torch_save` with ``weights_only=True``; clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or not a torch "
                         f"file): {exc}") from exc
    if not isinstance(payload, dict) or "config" not in payload:
        raise ValueError(f"{path} is not a TRC checkpoint (no config)")
    return payload


def load_policy(path: str | Path, receding_horizon: bool = False) -> TRCPolicy:
    """Load a planner saved by `TRCPolicy.save`."""
    payload = load_checkpoint(path)
    try:
        config = json.loads(payload["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has a corrupt config: {exc}") from exc
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} has format {config.get('format')!r}, expected {FORMAT!r}")
    problem = make_problem(config["env_id"], **config["env_kwargs"])
    model = TinyRecursiveControl(problem, TRCConfig(**config["model"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{path}: weights do not match the config: {exc}") from exc
    return TRCPolicy(model, config["env_id"], config["env_kwargs"], receding_horizon,
                     config.get("metadata"))
