"""The TRC planner: the model, the sequence-planning policy, behaviour cloning and GRPO."""

from policies.bc import BCConfig, train_bc
from policies.grpo import GRPOConfig, finetune
from policies.model import PRESETS, TinyRecursiveControl, TRCConfig
from policies.policy import TRCPolicy, load_policy

__all__ = ["PRESETS", "BCConfig", "GRPOConfig", "TRCConfig", "TRCPolicy", "TinyRecursiveControl",
           "finetune", "load_policy", "train_bc"]
