"""The TRC model, its policy face and behaviour cloning."""

import numpy as np
import pytest
import torch

import trc_gym
from baselines import ZeroPolicy
from policies import BCConfig, TinyRecursiveControl, TRCConfig, TRCPolicy, load_policy, train_bc
from policies.bc import bc_loss
from trc_gym import datasets
from trc_gym.problem import LinearProblem

DI = "TRC-DoubleIntegrator-v0"
SEED_SIZES = {"small": 104_862, "medium": 530_590, "large": 2_604_062}


class ThreeStateProblem(LinearProblem):
    """Another problem's dims (n=3, m=2, N=6) with asymmetric bounds."""

    def __init__(self):
        self.A = np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.1], [0.0, 0.0, 0.9]])
        self.B = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.2]])
        super().__init__(name="ThreeState", state_names=("a", "b", "c"), control_names=("u", "w"),
                         dt=0.1, horizon=6, Q=np.eye(3), R=0.1 * np.eye(2), Qf=10 * np.eye(3),
                         u_low=[-1.0, 0.0], u_high=[2.0, 0.5], state_low=[-1, -1, -1],
                         state_high=[1, 1, 1], tolerance=0.1)


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_preset_sizes_match_the_seed(size):
    model = TinyRecursiveControl.from_preset(trc_gym.make_problem(DI), size)
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert abs(counts["total"] / SEED_SIZES[size] - 1) < 0.15
    assert all(v > 0 for v in counts.values()) and len(counts) == 6  # five parts and the total


@pytest.mark.parametrize("reasoning,cost_gradient", [("mlp", False), ("attention", False),
                                                     ("mlp", True)])
@pytest.mark.parametrize("make_problem", [lambda: trc_gym.make_problem(DI), ThreeStateProblem])
def test_shapes_and_bounds(make_problem, reasoning, cost_gradient):
    problem = make_problem()
    model = TinyRecursiveControl(problem, TRCConfig(latent_dim=32, hidden_dim=32,
                                                    reasoning=reasoning, n_refine=3,
                                                    cost_gradient=cost_gradient))
    x0 = torch.randn(5, problem.n_state) * 10  # far outside the training box
    out = model(x0, torch.zeros(5, problem.n_state))
    assert out["controls"].shape == (5, problem.horizon, problem.n_control)
    assert len(out["iterates"]) == 4 and out["iterates"][-1] is out["controls"]
    for controls in out["iterates"]:
        assert torch.all(controls >= torch.tensor(problem.u_low, dtype=torch.float32))
        assert torch.all(controls <= torch.tensor(problem.u_high, dtype=torch.float32))


def test_the_plan_is_the_lowest_cost_of_the_refined_proposals():
    problem = ThreeStateProblem()
    torch.manual_seed(0)
    model = TinyRecursiveControl(problem, TRCConfig(latent_dim=32, hidden_dim=32, n_refine=2,
                                                    n_proposals=3))
    x0, target = torch.rand(16, 3) * 2 - 1, torch.zeros(16, 3)
    out = model(x0, target)
    assert len(out["chains"]) == 3 and out["chains"][0].shape == (16, 3, 6, 2)
    final = out["chains"][-1]
    costs = torch.stack([problem.cost_torch(x0, target, final[:, k]) for k in range(3)], 1)
    assert len(set(costs.argmin(1).tolist())) > 1  # the choice depends on the start
    for plans, chain in zip(out["iterates"], out["chains"]):
        torch.testing.assert_close(plans, chain[torch.arange(16), costs.argmin(1)])
    assert out["controls"] is out["iterates"][-1]


def test_winner_takes_all_cloning_keeps_both_modes_of_the_demonstrations():
    """Each start is shown one of two opposite plans at random. One plan can only learn their
    average; two proposals learn one mode each, so that from held-out starts both modes are
    among them."""
    problem = trc_gym.make_problem(DI)
    rng = np.random.default_rng(0)

    def starts(size):
        return torch.as_tensor(rng.uniform(problem.state_low, problem.state_high, (size, 2)),
                               dtype=torch.float32)

    mode = torch.full((1, problem.horizon, 1), 0.5 * float(problem.u_high[0]))
    x0, held_out = starts(256), starts(256)
    sign = torch.as_tensor(rng.choice([-1.0, 1.0], 256), dtype=torch.float32)
    expert = sign[:, None, None] * mode
    farthest_mode = {}
    for proposals in (1, 2):
        torch.manual_seed(0)
        policy = TRCPolicy.create(DI, n_refine=0, n_proposals=proposals)
        optimizer = torch.optim.Adam(policy.model.parameters(), lr=3e-3)
        for _ in range(200):
            loss, _ = bc_loss(policy, x0, torch.zeros_like(x0), expert, torch.zeros(256), 1.0,
                              0.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out = policy.model(held_out, torch.zeros_like(held_out))
        plans = out["chains"][-1] if proposals > 1 else out["controls"][:, None]  # [B, P, N, m]
        u_half = float(problem.u_high[0])
        distance = torch.stack([((plans - s * mode) / u_half).square().mean((2, 3)).amin(1)
                                for s in (-1.0, 1.0)])  # [mode, start]: nearest proposal
        farthest_mode[proposals] = float(distance.amax(0).mean())
    assert farthest_mode[1] > 0.2  # the average of +-0.5 (normalised): 0.25 from each mode
    assert farthest_mode[2] < 0.02


@pytest.mark.parametrize("reasoning", ["mlp", "attention"])
def test_gradients_reach_every_part(reasoning):
    problem = trc_gym.make_problem(DI)
    model = TinyRecursiveControl.create_small(problem, reasoning=reasoning).train()
    x0, target = torch.randn(8, 2), torch.zeros(8, 2)
    out = model(x0, target)
    loss = sum(problem.cost_torch(x0, target, u).mean() for u in out["iterates"])
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_refinement_reads_the_simulated_errors():
    """Perturbing what the simulation returns changes the refined plans (not the first one);
    with error feedback off, it changes nothing."""
    for feedback in (True, False):
        problem = trc_gym.make_problem(DI)
        torch.manual_seed(0)
        model = TinyRecursiveControl.create_small(problem, error_feedback=feedback).eval()
        x0, target = torch.randn(4, 2), torch.zeros(4, 2)
        with torch.no_grad():
            before = model(x0, target)["iterates"]
            true_rollout = problem.rollout_torch
            problem.rollout_torch = lambda x, u, f=true_rollout: f(x, u) + 0.5
            after = model(x0, target)["iterates"]
        torch.testing.assert_close(before[0], after[0])
        changed = not torch.allclose(before[-1], after[-1])
        assert changed == feedback


def test_refinement_reads_the_clearance_of_its_simulated_plan():
    """On ObstacleNav the feedback ends with each simulated state's clearance to each obstacle,
    capped at 1 m, and changing the clearance it reads changes the refined plans only while that
    feedback is on; problems without hard constraints get no such columns."""
    problem = trc_gym.make_problem("TRC-ObstacleNav-v0")
    x0 = torch.tensor([[-4.0, 0.0, 0.0, 0.0], [-0.2, 1.2, 0.0, 0.0]])  # the second 0.3 m from
    target = torch.tensor([[4.0, 0.0, 0.0, 0.0]] * 2)                   # obstacle 0's edge
    plan = torch.zeros(2, problem.horizon, 2)  # at rest: every state is the start
    widths = {}
    for feedback in (True, False):
        torch.manual_seed(0)
        model = TinyRecursiveControl.create_small(problem, constraint_feedback=feedback).eval()
        features = model.error_features(target, model.simulate(x0, target, plan, "shortcut"))
        widths[feedback] = features.shape[-1]
        if feedback:
            clearance = problem.clearance_torch(x0[:, :2]).clamp(max=1.0)
            torch.testing.assert_close(features[:, :, -5:], clearance[:, None].expand(-1, 50, -1))
            assert features[1, 0, -5] == pytest.approx(0.3, abs=1e-6)
        with torch.no_grad():
            before = model(x0, target)["iterates"]
            true_margins = problem.constraint_margins_torch
            problem.constraint_margins_torch = lambda states, f=true_margins: f(states) - 0.2
            after = model(x0, target)["iterates"]
            del problem.constraint_margins_torch
        torch.testing.assert_close(before[0], after[0])
        assert (not torch.allclose(before[-1], after[-1])) == feedback
    assert widths[True] == widths[False] + 5
    di = trc_gym.make_problem(DI)
    assert TinyRecursiveControl.create_small(di, constraint_feedback=True).n_margins == 0


def test_bad_config_raises():
    with pytest.raises(ValueError, match="reasoning must be"):
        TRCConfig(reasoning="lstm")
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        TRCPolicy.create(DI, "huge")


def eager_iterates(policy, x0, target):
    """The eval model run as Python, without gradients (attention takes its fused path then)."""
    with torch.no_grad():
        out = policy.model.eval()(torch.as_tensor(x0, dtype=torch.float32),
                                  torch.as_tensor(target, dtype=torch.float32))
    return [u.double().numpy() for u in out["iterates"]]


@pytest.mark.parametrize("env_id,overrides", [
    # CartPole traces in twice Pendulum's time, and Pendulum covers trigonometric dynamics.
    pytest.param(env_id, {}, marks=pytest.mark.slow) if env_id == "TRC-CartPole-v0"
    else (env_id, {}) for env_id in trc_gym.ENV_IDS]
    + [(DI, {"reasoning": "attention"}), (DI, {"cost_gradient": True})])
def test_plan_is_the_eval_models_plan_bit_for_bit(env_id, overrides):
    """`plan` (a traced graph in inference mode; no_grad where the model differentiates its
    own simulation) returns exactly the eager eval model's plans, at batch 1 and batched, even
    when the model was left in training mode."""
    policy = TRCPolicy.create(env_id, "small", **overrides)
    x0, target = trc_gym.held_out_starts(env_id, 6)
    policy.model.train()
    first = policy.plan(x0[:1], target[:1])  # traced at batch 1 ...
    assert not policy.model.training
    np.testing.assert_array_equal(first, eager_iterates(policy, x0[:1], target[:1])[-1])
    expected = eager_iterates(policy, x0, target)  # ... and used at batch 6
    np.testing.assert_array_equal(policy.plan(x0, target), expected[-1])
    for got, want in zip(policy.iterates(x0, target), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_plan_follows_weights_changed_in_place_or_replaced():
    policy = TRCPolicy.create(DI, "small")
    x0, target = trc_gym.held_out_starts(DI, 4)
    before = policy.plan(x0, target)
    with torch.no_grad():
        policy.model.control_decoder[-1].bias.add_(0.1)  # what an optimizer step does
    changed = policy.plan(x0, target)
    assert not np.array_equal(changed, before)
    np.testing.assert_array_equal(changed, eager_iterates(policy, x0, target)[-1])
    policy.model.load_state_dict(TRCPolicy.create(DI, "small").model.state_dict())
    policy.model.control_decoder[-1].bias = torch.nn.Parameter(torch.ones(15))  # replaced
    np.testing.assert_array_equal(policy.plan(x0, target), eager_iterates(policy, x0, target)[-1])
    policy.model.control_decoder[-1] = torch.nn.Linear(192, 15)  # a submodule replaced
    np.testing.assert_array_equal(policy.plan(x0, target), eager_iterates(policy, x0, target)[-1])


@pytest.mark.parametrize("env_id", [DI, "TRC-VanDerPol-v0"])
def test_planning_in_inference_mode_leaves_the_problem_differentiable(env_id):
    """The problem caches its constants as tensors; made during `plan` (inference mode) they
    must still serve a later differentiable pass (fine-tuning starts right after planning)."""
    policy = TRCPolicy.create(env_id, "small")
    x0, target = trc_gym.held_out_starts(env_id, 4)
    policy.plan(x0, target)
    x0, target = (torch.as_tensor(a, dtype=torch.float32) for a in (x0, target))
    out = policy.model(x0, target, gradient="exact")
    policy.problem.cost_torch(x0, target, out["controls"]).sum().backward()
    assert policy.model.control_decoder[-1].weight.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path):
    policy = TRCPolicy.create(DI, "small", reasoning="attention")
    policy.metadata["note"] = "round trip"
    path = policy.save(tmp_path / "p.pt")
    loaded = load_policy(path)
    x0, target = trc_gym.held_out_starts(DI, 16)
    np.testing.assert_array_equal(policy.plan(x0, target), loaded.plan(x0, target))
    assert loaded.metadata["note"] == "round trip" and loaded.env_id == DI
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt"]  # no temp file left


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_policy(tmp_path / "junk.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"config": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_policy(tmp_path / "evil.pt")  # weights_only refuses to run code
    torch.save({"config": '{"format": "other"}', "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format"):
        load_policy(tmp_path / "other.pt")
    policy = TRCPolicy.create(DI, "small")
    payload = {"config": policy.save(tmp_path / "ok.pt") and
               torch.load(tmp_path / "ok.pt", weights_only=True)["config"],
               "state_dict": TRCPolicy.create(DI, "medium").model.state_dict()}
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not match"):
        load_policy(tmp_path / "mismatch.pt")


@pytest.mark.parametrize("env_id", ["TRC-Pendulum-v0", "TRC-Quadrotor2D-v0",
                                    pytest.param("TRC-CartPole-v0", marks=pytest.mark.slow)])
def test_the_planner_reads_angles_as_sine_and_cosine(env_id):
    """Whole turns of an angle change neither the dynamics nor the cost, nor the plan; and the
    plan is continuous across +-pi, where the wrapped angle jumps."""
    torch.manual_seed(0)
    policy = TRCPolicy.create(env_id)
    problem = policy.problem
    (angle,) = problem.angle_indices
    x0 = problem.sample_initial_states(np.random.default_rng(0), 8)
    target = problem.sample_targets(np.random.default_rng(1), 8)
    turned = x0.copy()
    turned[:, angle] += 2 * np.pi * np.array([1, -1, 2, -2, 1, -1, 3, -3])
    encode = policy.model.encode_state
    x0_t, turned_t, target_t = (torch.tensor(a, dtype=torch.float32) for a in (x0, turned, target))
    torch.testing.assert_close(encode(turned_t, target_t), encode(x0_t, target_t), atol=1e-5,
                               rtol=0)
    # The plans simulate their start in float32, whose rounding of a large angle the unstable
    # dynamics amplify: equal to a thousandth of the control range.
    tolerance = 1e-3 * float(problem.u_high[0] - problem.u_low[0])
    np.testing.assert_allclose(policy.plan(turned, target), policy.plan(x0, target),
                               atol=tolerance)
    below, above = x0[:1].copy(), x0[:1].copy()
    below[:, angle], above[:, angle] = np.pi - 1e-6, -np.pi + 1e-6
    np.testing.assert_allclose(policy.plan(below, target[:1]), policy.plan(above, target[:1]),
                               atol=tolerance)


def test_plan_rejects_bad_input():
    policy = TRCPolicy.create(DI, "small")
    with pytest.raises(ValueError, match="x0 has shape"):
        policy.plan(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        policy.plan(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))


@pytest.fixture(scope="module")
def small_data():
    return datasets.generate(DI, 600, seed=3, progress=False)


def _train(data, epochs, seed=0, run_dir=None, resume=False):
    torch.manual_seed(seed)
    policy = TRCPolicy.create(DI, "small")
    history = train_bc(policy, data, BCConfig(epochs=epochs, batch_size=64, seed=seed,
                                              warmup_steps=10), run_dir=run_dir, resume=resume,
                       progress=False)
    return policy, history


def test_short_cloning_beats_untrained_and_zero(small_data):
    torch.manual_seed(0)
    untrained = trc_gym.evaluate(TRCPolicy.create(DI, "small"), DI, 200)
    trained, history = _train(small_data, 6)
    result = trc_gym.evaluate(trained, DI, 200)
    zero = trc_gym.evaluate(ZeroPolicy(DI), DI, 200)
    assert result["mean_cost"] < 0.5 * untrained["mean_cost"]
    assert result["mean_cost"] < 0.5 * zero["mean_cost"]
    assert history[-1]["val_gap"] < history[0]["val_gap"]


def test_cloning_is_deterministic_and_resumable(small_data, tmp_path,
                                                bc_interrupted_in_third_epoch):
    a, _ = _train(small_data, 3)
    b, _ = _train(small_data, 3)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    with bc_interrupted_in_third_epoch():
        _train(small_data, 3, run_dir=tmp_path)
    resumed, history = _train(small_data, 3, run_dir=tmp_path, resume=True)
    assert len(history) == 3
    x0, target = trc_gym.held_out_starts(DI, 32)
    np.testing.assert_allclose(resumed.plan(x0, target), a.plan(x0, target), atol=1e-6)
    assert (tmp_path / "bc_log.csv").read_text().count("\n") == 4  # header + 3 epochs
    _train(small_data, 3, run_dir=tmp_path)  # a new run in the same folder: a new log
    assert (tmp_path / "bc_log.csv").read_text().count("\n") == 4


def test_exact_gradient_is_the_plans_true_gradient_and_the_shortcut_is_not():
    """Fine-tuning differentiates the final plan's cost; the exact gradient must be its true
    slope (checked by central differences in float64), while cloning's shortcut differs."""
    torch.manual_seed(0)
    policy = TRCPolicy.create(DI, "small")
    model = policy.model.double().eval()
    x0, target = (torch.as_tensor(a) for a in trc_gym.held_out_starts(DI, 16))
    params = list(model.parameters())
    direction = [torch.randn_like(p) for p in params]

    def cost(exact: bool = False) -> torch.Tensor:
        plans = model(x0, target, gradient="exact" if exact else "shortcut")["controls"]
        return policy.problem.cost_torch(x0, target, plans).mean()

    def slope(exact: bool) -> float:
        model.zero_grad()
        cost(exact).backward()
        return float(sum((p.grad * d).sum() for p, d in zip(params, direction)
                         if p.grad is not None))  # the shortcut leaves some without one

    step = 1e-6
    with torch.no_grad():
        torch._foreach_add_(params, direction, alpha=step)
        plus = float(cost())
        torch._foreach_add_(params, direction, alpha=-2 * step)
        minus = float(cost())
        torch._foreach_add_(params, direction, alpha=step)
    finite_difference = (plus - minus) / (2 * step)
    assert slope(True) == pytest.approx(finite_difference, rel=1e-4)
    assert abs(slope(False) - finite_difference) > 0.1 * abs(finite_difference)
    with torch.no_grad():
        torch.testing.assert_close(model(x0, target, gradient="exact")["controls"],
                                   model(x0, target)["controls"], rtol=0, atol=0)


@pytest.mark.parametrize("env_id", [DI, "TRC-Rocket-v0"])
def test_mpc_validation_is_the_gap_of_the_replanning_episodes_as_the_env_steps_them(env_id):
    from policies.bc import validation_gap
    from trc_gym.evaluation import gap, step_episodes

    torch.manual_seed(0)
    policy = TRCPolicy.create(env_id, latent_dim=16, hidden_dim=32, n_refine=1)
    problem = policy.problem
    rng = np.random.default_rng(4)
    x0, target = problem.sample_initial_states(rng, 6), problem.sample_targets(rng, 6)
    expert = trc_gym.make_expert(env_id).plan(x0, target)
    data = datasets.Demonstrations(x0, target, expert, problem.rollout(x0, expert),
                                   problem.cost(x0, target, expert), {"env_id": env_id})
    mpc = TRCPolicy(policy.model, env_id, receding_horizon=True)
    stepped = step_episodes(mpc, env_id, x0, target)[0].costs
    assert validation_gap(policy, data, "mpc") == pytest.approx(
        gap(stepped.mean(), data.costs.mean()), rel=1e-9)
    open_loop = problem.cost(x0, target, policy.plan(x0, target))
    assert validation_gap(policy, data) == pytest.approx(gap(open_loop.mean(),
                                                             data.costs.mean()), rel=1e-12)
