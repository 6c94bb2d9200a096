"""The TRC planner: the model, the sequence-planning policy, behaviour cloning, DAgger and
GRPO."""

from policies.bc import BCConfig, train_bc
from policies.dagger import DAggerConfig, dagger
from policies.grpo import GRPOConfig, finetune
from policies.model import PRESETS, TinyRecursiveControl, TRCConfig
from policies.policy import TRCPolicy, load_policy

__all__ = ["PRESETS", "BCConfig", "DAggerConfig", "GRPOConfig", "TRCConfig", "TRCPolicy",
           "TinyRecursiveControl", "dagger", "finetune", "load_policy", "train_bc"]
