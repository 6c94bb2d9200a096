"""The compiled rollout is the eager rollout, faster: on every env whose rollout is a loop, the
same states, costs, plans and gradients, at batch 1 and batched (float32 everywhere, float64 on
Rocket). Compiling takes about a minute per env on a fresh machine (then it is cached), so
the default run checks an env without and one with trigonometric dynamics (its gradient, whose
compiled VJP takes two more minutes, in the slow run), and the slow run (``make test-all``)
every env."""

import copy
import warnings

import numpy as np
import pytest
import torch

import trc_gym
from policies import TRCPolicy
from trc_gym.compiled_rollout import CompiledRollout, compile_rollout, problem_key

DEFAULT_RUN = ("TRC-VanDerPol-v0", "TRC-Pendulum-v0")  # Pendulum compiles in half CartPole's time


def looped(default_run: tuple[str, ...]) -> list:
    """Every env whose rollout is a loop; those outside ``default_run`` marked slow."""
    return [pytest.param(env_id, marks=() if env_id in default_run else pytest.mark.slow)
            for env_id in trc_gym.ENV_IDS if env_id != "TRC-DoubleIntegrator-v0"]


LOOPED = looped(DEFAULT_RUN)


@pytest.fixture(scope="module", params=LOOPED)
def env_id(request):
    return request.param


@pytest.fixture(scope="module")
def pair(env_id):
    """An eager planner and one with the compiled rollout, with the same weights."""
    torch.manual_seed(0)
    eager = TRCPolicy.create(env_id, "small")
    fast = TRCPolicy.create(env_id, "small")
    fast.model.load_state_dict(eager.model.state_dict())
    assert fast.compile(float64=env_id == "TRC-Rocket-v0", planner=False)
    return eager, fast


def random_plans(problem, batch, seed=0):
    rng = np.random.default_rng(seed)
    x0 = problem.sample_initial_states(rng, batch)
    U = rng.uniform(problem.u_low, problem.u_high, (batch, problem.horizon, problem.n_control))
    return x0, problem.sample_targets(rng, batch), U


@pytest.mark.parametrize("batch", [1, 37])
def test_states_and_costs_equal_the_eager_rollouts(pair, batch):
    eager, fast = pair
    x0, target, U = random_plans(eager.problem, batch)
    for dtype in (torch.float32, torch.float64):
        x, u = (torch.as_tensor(a, dtype=dtype) for a in (x0, U))
        for terminate in (True, False):
            with torch.no_grad():
                expected = eager.problem.rollout_torch(x, u, terminate)
                got = fast.problem.rollout_torch(x, u, terminate)
            # Bit for bit, but for Rocket's batched thrust norm, whose last bits may differ.
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.problem.cost(x0, target, U),
                               eager.problem.cost(x0, target, U), rtol=1e-12)


@pytest.mark.parametrize("batch", [1, 16])
def test_plans_equal_the_eager_planners(pair, batch, env_id):
    eager, fast = pair
    x0, target = trc_gym.held_out_starts(env_id, batch)
    np.testing.assert_array_equal(fast.plan(x0, target), eager.plan(x0, target))
    mpc_eager = TRCPolicy(eager.model, env_id, receding_horizon=True)
    mpc_fast = TRCPolicy(fast.model, env_id, receding_horizon=True)
    obs = trc_gym.envs.base.observations(eager.problem, x0, target, 3)
    np.testing.assert_array_equal(mpc_fast.predict(obs)[0], mpc_eager.predict(obs)[0])


@pytest.mark.parametrize("env_id", looped(DEFAULT_RUN[:1]), indirect=True)
def test_gradients_equal_the_eager_backward_pass(pair):
    """Cloning's cost term and fine-tuning's exact gradient backpropagate through the compiled
    rollout (the adjoint, by compiled chunk VJPs); the gradients match eager autograd to float
    rounding, and the compiled VJP is in use."""
    eager, fast = pair
    x0, target, U = random_plans(eager.problem, 5, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast.problem.fast_rollouts[torch.float32].vjp()
    assert not [w for w in caught if "gradient unavailable" in str(w.message)]

    def gradients(model, problem, dtype):
        """The cost's gradients in float64: by the planner's weights, and by the plans ``U``."""
        x, t = (torch.as_tensor(a, dtype=dtype) for a in (x0, target))
        model.zero_grad()
        plans = model(x, t, gradient="exact")["controls"]
        problem.cost_torch(x, t, plans).sum().backward()
        by_weights = torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None])
        u = torch.as_tensor(U, dtype=dtype).requires_grad_()
        problem.cost_torch(x, t, u).sum().backward()
        return by_weights.double(), u.grad.double()

    def difference(a, b):
        return float((a - b).norm() / b.norm())

    fast32 = gradients(fast.model, fast.problem, torch.float32)
    eager32 = gradients(eager.model, eager.problem, torch.float32)
    exact = gradients(copy.deepcopy(eager.model).double(), eager.problem, torch.float64)
    for f, e, x in zip(fast32, eager32, exact):
        # Float32 sums in another order. Through an unstable swing-up they round far from the
        # float64 gradient (2e-3 on Pendulum), and the two float32 paths must agree within a
        # tenth of that rounding.
        assert difference(f, e) < max(1e-5, 0.1 * difference(e, x))


@pytest.mark.parametrize("env_id,proposals", [
    ("TRC-DoubleIntegrator-v0", 1), ("TRC-DoubleIntegrator-v0", 3), ("TRC-VanDerPol-v0", 1),
    *(pytest.param(env_id, 1, marks=pytest.mark.slow) for env_id in trc_gym.ENV_IDS
      if env_id not in ("TRC-DoubleIntegrator-v0", "TRC-VanDerPol-v0"))])
def test_the_compiled_planner_plans_as_the_traced_one(env_id, proposals):
    """The whole planner compiled (weights as constants) gives the traced planner's batch-1
    plans to float32 rounding and the same successes; a weight change sets it aside."""
    torch.manual_seed(0)
    # Fewer refinements: a faster build.
    traced, fast = (TRCPolicy.create(env_id, "small", n_refine=2, n_proposals=proposals)
                    for _ in range(2))
    fast.model.load_state_dict(traced.model.state_dict())
    traced.compile(planner=False)
    assert fast.compile()
    calls, compiled = [], fast._trace["compiled"]
    fast._trace["compiled"] = lambda inputs: calls.append(1) or compiled(inputs)
    x0, target = trc_gym.held_out_starts(env_id, 24)
    plans = [np.concatenate([policy.plan(x0[i:i + 1], target[i:i + 1]) for i in range(len(x0))])
             for policy in (traced, fast)]
    assert len(calls) == len(x0)
    # To float32 rounding: within 1e-5 of the plans' scale, or of the traced planner's own
    # spread between batch sizes (its kernels round by batch too), where an unstable system
    # (CartPole) amplifies rounding to more than that.
    scale = np.abs(plans[0]).max()
    spread = np.abs(traced.plan(x0, target) - plans[0]).max() / scale
    assert np.abs(plans[1] - plans[0]).max() / scale <= max(1e-5, spread)
    problem = traced.problem
    np.testing.assert_array_equal(*(problem.success(problem.rollout(x0, U), target)
                                    for U in plans))
    # Compiling left the model as it was: its eager forward (training) gives the same plans.
    with torch.no_grad():
        eager = [p.model(*(torch.as_tensor(a[:3], dtype=torch.float32) for a in (x0, target)))
                 ["controls"] for p in (traced, fast)]
    torch.testing.assert_close(eager[1], eager[0], rtol=0, atol=0)
    for policy in (traced, fast):
        with torch.no_grad():
            next(policy.model.parameters()).add_(1e-3)
    np.testing.assert_array_equal(fast.plan(x0[:1], target[:1]), traced.plan(x0[:1], target[:1]))
    assert "compiled" not in fast._trace


@pytest.mark.slow
def test_a_single_start_build_keeps_its_stack_buffers_after_other_compiles(monkeypatch,
                                                                           tmp_path):
    """Inductor picks its CPU wrapper generator once per process; a planner compiled first
    must not leave a later single-start build without stack buffers (10x slower)."""
    import zipfile

    monkeypatch.setenv("TRC_CACHE_DIR", str(tmp_path))
    assert TRCPolicy.create("TRC-DoubleIntegrator-v0", "small", n_refine=1).compile()
    CompiledRollout(trc_gym.make_problem("TRC-VanDerPol-v0"))
    (single,) = tmp_path.glob("VanDerPolProblem-*-single*.pt2")
    with zipfile.ZipFile(single) as package:
        (wrapper,) = [n for n in package.namelist() if n.endswith("wrapper.cpp")]
        assert "aoti_include/array_ref.h" in package.read(wrapper).decode()


def test_the_compiled_step_is_cached_on_disk(env_id, pair, monkeypatch):
    """A second problem of the same env loads the compiled step from disk, compiling nothing;
    other parameters mean another file."""
    _, fast = pair
    rollout = fast.problem.fast_rollouts[torch.float32]

    def compile_again(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_again)
    again = CompiledRollout(trc_gym.make_problem(env_id))
    assert again.key == rollout.key
    x0, _, U = random_plans(fast.problem, 3)
    x, u = (torch.as_tensor(a, dtype=torch.float32) for a in (x0, U))
    torch.testing.assert_close(again.smooth(x, u), rollout.smooth(x, u), rtol=0, atol=0)
    if env_id == "TRC-VanDerPol-v0":
        changed = trc_gym.make_problem(env_id, random_target=True)
        assert problem_key(changed, torch.float32) != rollout.key


def test_without_a_compiler_the_eager_rollout_stays(monkeypatch, tmp_path):
    monkeypatch.setenv("TRC_CACHE_DIR", str(tmp_path))

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    monkeypatch.setattr(trc_gym.compiled_rollout, "_warned", False)
    problem = trc_gym.make_problem("TRC-Pendulum-v0")
    with pytest.warns(UserWarning, match="no C.. compiler"):
        assert compile_rollout(problem) is None
    assert problem.fast_rollouts == {} and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        CompiledRollout(problem)
