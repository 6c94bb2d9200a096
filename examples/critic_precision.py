"""Why SAC's controls miss the optimum on a linear problem, where the optimal action value is
exact: ``Q*(s0, u)`` is the box QP's optimum with the first control pinned to ``u``.

    python examples/critic_precision.py runs/compare/DoubleIntegrator/sac

For the agent's first control from each held-out start it prints

- the regret of that one control: ``Q*(s0, u_agent) - J*``, as a share of the mean ``J*``;
- how often the agent's own critic ranks its action above the optimal one, and the regret of the
  critic's own best action (on a grid of 401 actions);
- the scale that SAC's reward normalisation (``VecNormalize``, ``gamma = 1``) has after the
  agent's random warm-up (``learning_starts`` random steps), and after the rest of the budget
  stepped with the agent's own actions: a reward is divided by it, and its running statistics
  pool every return since the start, the warm-up's included.

A critic that cannot resolve action values a few tenths of a percent apart cannot point its actor
closer than that to the optimum.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecNormalize

from baselines import load_agent
from baselines.hyperparameters import hyperparameters
from baselines.training import make_training_env
from trc_gym.envs import make_expert
from trc_gym.envs.base import observations
from trc_gym.evaluation import DEFAULT_EPISODES, held_out_starts
from trc_gym.experts import BoxQPExpert
from trc_gym.experts.lqr import box_qp_of, solve_box_qp

GRID = 401  # actions on [-1, 1] at which the critic is read


def pinned_first_control_cost(problem, x0: np.ndarray, target: np.ndarray,
                              u0: np.ndarray) -> np.ndarray:
    """``Q*(x0, u0) [B]``: the least cost of a plan whose first control is ``u0 [B, 1]`` (one
    control dimension), the rest optimal within the box (the exact QP over them)."""
    H, g, _, lo, hi = box_qp_of(problem, x0, target)
    rest, _ = solve_box_qp(H[1:, 1:], g[:, 1:] + u0[:, :1] * H[None, 0, 1:], lo[1:], hi[1:])
    plans = np.concatenate([u0[:, :1], rest], axis=1).reshape(len(x0), problem.horizon, 1)
    return problem.cost(x0, target, plans)


def reward_divisors(agent, warm_up: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """The divisor ``sqrt(var + eps)`` of ``VecNormalize``'s rewards (``gamma = 1``, as SAC's
    table trains) after ``warm_up`` uniformly random actions, and after ``steps`` more of the
    trained ``agent``'s own actions (an estimate of where training left it: SB3's running
    statistics pool every return since the start)."""
    venv = VecNormalize(make_training_env(agent.env_id, 1, seed=seed), norm_obs=False,
                        norm_reward=True, gamma=1.0)
    obs = venv.reset()
    rng = np.random.default_rng(seed)
    divisors = []
    for k in range(warm_up + steps):
        if k < warm_up:
            unit = rng.uniform(-1.0, 1.0, (1, *venv.action_space.shape))
        else:
            unit, _ = agent.model.predict(agent.normalizer(obs), deterministic=True)
        obs = venv.step(np.asarray(unit, dtype=np.float32))[0]
        if k + 1 in (warm_up, warm_up + steps):
            divisors.append(float(np.sqrt(venv.ret_rms.var + venv.epsilon)))
    return divisors[0], divisors[-1]


def critic_precision(agent, episodes: int = DEFAULT_EPISODES) -> dict[str, float]:
    """The numbers of the module docstring for an SB3 SAC ``agent`` on a one-control problem
    with an exact (box QP) expert."""
    env_id = agent.env_id
    expert = make_expert(env_id)
    problem = expert.problem
    if not isinstance(expert, BoxQPExpert) or problem.n_control != 1 or agent.algo != "sac":
        raise ValueError(f"critic_precision needs a SAC agent on a one-control linear env, got "
                         f"{agent.algo} on {env_id}")
    x0, target = held_out_starts(env_id, episodes)
    optimal = expert.plan(x0, target)
    best_cost = problem.cost(x0, target, optimal)
    obs = observations(problem, x0, target, 0)
    u_agent = np.asarray(agent.predict(obs)[0], dtype=np.float64).reshape(-1, 1)

    def unit(u: np.ndarray) -> torch.Tensor:  # the physical action as the critic reads it
        return torch.as_tensor(2 * (u - problem.u_low) / (problem.u_high - problem.u_low) - 1,
                               dtype=torch.float32)

    def critic(u_unit: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.min(*agent.model.critic(seen, u_unit)).numpy()[:, 0]

    seen = torch.as_tensor(agent.normalizer(obs))
    prefers_own = critic(unit(u_agent)) > critic(unit(optimal[:, 0]))
    grid = np.linspace(-1.0, 1.0, GRID)
    values = np.stack([critic(torch.full((len(x0), 1), a, dtype=torch.float32)) for a in grid])
    u_critic = problem.u_low + (grid[values.argmax(0)][:, None] + 1) / 2 * (
        problem.u_high - problem.u_low)
    scale = best_cost.mean()
    settings = agent.info.get("hyperparameters") or hyperparameters(env_id, "sac")
    warm_up = settings["learning_starts"]
    after_warm_up, at_end = reward_divisors(agent, warm_up, settings["n_timesteps"] - warm_up)
    return {
        "first_control_error": float(np.abs(u_agent - optimal[:, 0]).mean()),
        "first_control_regret": float(
            (pinned_first_control_cost(problem, x0, target, u_agent) - best_cost).mean() / scale),
        "critic_prefers_own_action": float(prefers_own.mean()),
        "critic_best_action_regret": float(
            (pinned_first_control_cost(problem, x0, target, u_critic) - best_cost).mean()
            / scale),
        "warm_up_steps": warm_up,
        "reward_divisor_after_warm_up": after_warm_up, "reward_divisor_at_end": at_end,
        "training_steps": settings["n_timesteps"],
        "mean_optimal_cost": float(scale)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agent", help="a SAC agent or run folder (trc train-baseline --algo sac)")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    args = parser.parse_args()
    try:
        result = critic_precision(load_agent(args.agent), args.episodes)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"{args.agent}, {args.episodes} held-out starts, first control:")
    print(f"  mean |u - u*| {result['first_control_error']:.3f}; its regret "
          f"{result['first_control_regret']:.3%} of the mean J* "
          f"({result['mean_optimal_cost']:.2f})")
    print(f"  the critic ranks the agent's action above u* on "
          f"{result['critic_prefers_own_action']:.0%} of the starts; the critic's best action's "
          f"regret {result['critic_best_action_regret']:.3%}")
    for when, key in (("the random warm-up", "reward_divisor_after_warm_up"),
                      ("the agent's own steps to the budget", "reward_divisor_at_end")):
        print(f"  reward normalisation after {when} divides rewards by {result[key]:.0f}: the "
              f"mean J* becomes {result['mean_optimal_cost'] / result[key]:.4f}")


if __name__ == "__main__":
    main()
