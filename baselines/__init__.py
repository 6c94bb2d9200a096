"""Baselines with the same interface as the TRC planner: expert, random and zero-control policies,
and (in `baselines.sb3`, needing the ``rl`` extra) Stable-Baselines3 PPO / SAC trainers whose
agents expose the same SB3-style ``predict``."""

from baselines.simple import ExpertPolicy, RandomPolicy, ZeroPolicy

_SB3_NAMES = ("SB3Agent", "load_agent", "train_agent", "train_ppo", "train_sac")


def __getattr__(name: str):
    if name in _SB3_NAMES:  # imported on first use: stable-baselines3 is an optional extra
        from baselines import sb3

        return getattr(sb3, name)
    raise AttributeError(f"module 'baselines' has no attribute {name!r}")


__all__ = ["ExpertPolicy", "RandomPolicy", "SB3Agent", "ZeroPolicy", "load_agent",
           "train_agent", "train_ppo", "train_sac"]
