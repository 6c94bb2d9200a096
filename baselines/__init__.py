"""Baselines with the same interface as the TRC planner: expert, random and zero-control policies
(and, in `baselines.sb3`, Stable-Baselines3 PPO / SAC trainers)."""

from baselines.simple import ExpertPolicy, RandomPolicy, ZeroPolicy

__all__ = ["ExpertPolicy", "RandomPolicy", "ZeroPolicy"]
