"""The TRC planner: the model, the sequence-planning policy, behaviour cloning and GRPO."""

from policies.model import PRESETS, TinyRecursiveControl, TRCConfig

__all__ = ["PRESETS", "TRCConfig", "TinyRecursiveControl"]
