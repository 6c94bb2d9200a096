"""Baselines with the same interface as the TRC planner: expert, random and zero-control policies,
and (needing the ``rl`` extra) Stable-Baselines3 PPO / SAC: `baselines.training` trains them,
`baselines.agent` holds the trained agent, which exposes the same SB3-style ``predict``."""

from baselines.simple import ExpertPolicy, RandomPolicy, ZeroPolicy

# Imported on first use: stable-baselines3 is an optional extra.
_SB3_NAMES = {"SB3Agent": "agent", "load_agent": "agent", "train_agent": "training",
              "train_ppo": "training", "train_sac": "training"}


def __getattr__(name: str):
    if name in _SB3_NAMES:
        import importlib

        try:
            module = importlib.import_module(f"baselines.{_SB3_NAMES[name]}")
        except ImportError as exc:
            raise ImportError(f"baselines.{name} needs stable-baselines3, the 'rl' extra: "
                              f"pip install -e '.[rl]' ({exc})") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'baselines' has no attribute {name!r}")


__all__ = ["ExpertPolicy", "RandomPolicy", "SB3Agent", "ZeroPolicy", "load_agent",
           "train_agent", "train_ppo", "train_sac"]
