"""Plans as a user executes them: one truth in the evaluation, and an expert that succeeds when
stepped through ``gym.make`` with float32 actions and observations.

- The evaluation's plan path (batched rollout) gives what stepping the env with ``predict``
  gives, for the expert (open loop), TRC and random policies on every env: plans made from the
  float32 observation, controls rounded to the action space's float32.
- The iLQR expert tracks its plan with its feedback gains, so the float32 rounding that an
  unstable swing-up amplifies open loop does not make it miss; its batched feedback path is
  its stepped path.
"""

import numpy as np
import pytest
import torch

import trc_gym
from baselines import ExpertPolicy, RandomPolicy
from policies import TRCPolicy
from trc_gym.envs import env_class, make_problem
from trc_gym.evaluation import (
    acts_by_plan,
    run_episodes,
    step_episodes,
    steps_like_control_env,
    trajectory_metrics,
)
from trc_gym.experts.ilqr import ILQRExpert, tracking_gains

N_HELD_OUT = 200  # starts of the slow success check
SLOW_EXPERTS = ("TRC-CartPole-v0", "TRC-Quadrotor2D-v0", "TRC-Rocket-v0", "TRC-ObstacleNav-v0")


class RememberingExpert(ExpertPolicy):
    """The expert, solving each batch of starts once (both paths ask for the same plans)."""

    def __init__(self, env_id, **kwargs):
        super().__init__(env_id, **kwargs)
        self.solved = {}

    def plan_and_gains(self, x0, target):
        key = (x0.tobytes(), target.tobytes())
        if key not in self.solved:
            self.solved[key] = super().plan_and_gains(x0, target)
        return self.solved[key]

    def plan(self, x0, target):
        return self.plan_and_gains(x0, target)[0]


def policies(env_id):
    torch.manual_seed(0)
    return {"expert (open loop)": RememberingExpert(env_id, open_loop=True),
            "TRC": TRCPolicy.create(env_id, "small", n_refine=1),  # a quick trace
            "random": RandomPolicy(env_id, seed=3)}


def cases():
    for env_id in trc_gym.ENV_IDS:
        for name in ("expert (open loop)", "TRC", "random"):
            slow = name.startswith("expert") and env_id in SLOW_EXPERTS
            yield pytest.param(env_id, name, marks=pytest.mark.slow if slow else ())


@pytest.mark.parametrize("env_id, name", list(cases()))
def test_the_plan_path_is_the_stepped_path(env_id, name):
    policy = policies(env_id)[name]
    assert acts_by_plan(policy)
    x0, target = trc_gym.held_out_starts(env_id, 3, seed=777)
    problem = make_problem(env_id)
    runs = {}
    for path in ("plan", "step"):
        if isinstance(policy, RandomPolicy):
            policy.rng = np.random.default_rng(3)  # the same draws on both paths
        runs[path] = run_episodes(policy, env_id, x0, target, path=path)
    taken = problem.alive_mask(runs["step"].states)  # a failed episode's tail is never taken
    np.testing.assert_array_equal(runs["plan"].controls[taken], runs["step"].controls[taken])
    np.testing.assert_allclose(runs["plan"].states, runs["step"].states, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(runs["plan"].costs, runs["step"].costs, rtol=1e-9)
    np.testing.assert_array_equal(*(problem.success(run.states, target)
                                    for run in runs.values()))


@pytest.mark.parametrize("env_id", [
    "TRC-Pendulum-v0", *(pytest.param(e, marks=pytest.mark.slow) for e in SLOW_EXPERTS)])
def test_the_tracked_expert_succeeds_where_its_open_loop_plan_misses(env_id):
    """From starts where float32 rounding alone makes the open-loop swing-up miss, the plan
    tracked with the expert's gains succeeds at the plan's own cost; batched and stepped
    feedback paths agree (where the env's step is ControlEnv's)."""
    x0, target = trc_gym.held_out_starts(env_id, 8, seed=777)
    open_loop, tracked = RememberingExpert(env_id, open_loop=True), RememberingExpert(env_id)
    assert tracked.feedback and not acts_by_plan(tracked)
    problem = make_problem(env_id)
    stepped = run_episodes(tracked, env_id, x0, target, path="step")
    if steps_like_control_env(env_id):  # the batched path serves envs with ControlEnv's step
        batched = run_episodes(tracked, env_id, x0, target, path="batched")
        np.testing.assert_array_equal(stepped.controls, batched.controls)
        np.testing.assert_allclose(stepped.costs, batched.costs, rtol=1e-9)
    assert problem.success(stepped.states, target).all()
    seen = next(iter(tracked.solved))  # the starts as the observation showed them
    plans = tracked.solved[seen][0]
    planned = problem.cost(np.frombuffer(seen[0]).reshape(x0.shape).copy(), target, plans)
    np.testing.assert_allclose(stepped.costs, planned, rtol=1e-4)
    if env_id == "TRC-Pendulum-v0":  # these starts: open loop misses some
        assert trajectory_metrics(problem, target, run_episodes(
            open_loop, env_id, x0, target))["success_rate"] < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [e for e in trc_gym.ENV_IDS
                                    if issubclass(env_class(e).expert_class, ILQRExpert)])
def test_the_expert_policy_succeeds_on_held_out_starts_through_the_env(env_id):
    """The target: `ExpertPolicy` stepped through gym.make (float32 observations and actions)
    succeeds on at least 99% of 200 held-out starts."""
    torch.set_num_threads(1)
    x0, target = trc_gym.held_out_starts(env_id, N_HELD_OUT)
    episodes, _ = step_episodes(ExpertPolicy(env_id), env_id, x0, target)
    success = make_problem(env_id).success(episodes.states, target).mean()
    assert success >= 0.99, f"{env_id}: {success:.1%}"


def test_tracking_gains_are_the_lqr_of_the_linearisation():
    """On a linear problem, along optimal plans that keep off the bound, the tracking gains are
    the finite-horizon LQR gains (time-varying Riccati), the same from every start."""
    from trc_gym.experts import finite_horizon_lqr

    env_id = "TRC-DoubleIntegrator-v0"
    problem = make_problem(env_id)
    _, target = trc_gym.held_out_starts(env_id, 2)
    x0 = target + np.array([[0.05, 0.0], [-0.03, 0.02]])  # near: no control saturates
    plans = trc_gym.make_expert(env_id).plan(x0, target)
    assert np.abs(plans).max() < 0.9 * problem.u_high.min()
    K = tracking_gains(problem, x0, target, plans)
    lqr = finite_horizon_lqr(problem.A, problem.B, problem.Q, problem.R, problem.Qf,
                             problem.horizon, problem.cost_weight)  # u = -K e
    np.testing.assert_allclose(K[0], -lqr, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(K[1], K[0], rtol=1e-9, atol=1e-12)


def test_the_expert_policy_runs_open_loop_on_request():
    env_id = "TRC-Pendulum-v0"
    assert issubclass(env_class(env_id).expert_class, ILQRExpert)
    assert ExpertPolicy(env_id).feedback and not ExpertPolicy(env_id, open_loop=True).feedback
    assert not ExpertPolicy(env_id, receding_horizon=True).feedback
    assert not ExpertPolicy("TRC-DoubleIntegrator-v0").feedback  # the exact QP has no gains
