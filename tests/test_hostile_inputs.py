"""Every input a user can give is checked: a wrong one gets a ValueError (or FileNotFoundError)
that names it, the CLI prints one line and exits 2, and no file is lost or left half-written.
Then property tests: the public entry points, fed random shapes, dtypes, NaN/inf, extreme
magnitudes and empty batches, either answer with a finite array of the right shape or raise a
ValueError."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trc_gym
from baselines import ExpertPolicy, RandomPolicy
from policies import BCConfig, GRPOConfig, TRCPolicy, load_policy
from trc_gym import datasets
from trc_gym.cli import main as trc

DI, VDP, NAV = "TRC-DoubleIntegrator-v0", "TRC-VanDerPol-v0", "TRC-ObstacleNav-v0"
ROOT = Path(__file__).resolve().parent.parent


def fails(argv, capsys, match):
    """``trc argv`` exits 2 with one line on stderr that matches ``match``, no traceback."""
    assert trc(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "di.npz"
    datasets.save(datasets.generate(DI, 40, seed=1, progress=False), path)
    return path


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("planner") / "di.pt"
    TRCPolicy.create(DI, "small").save(path)
    return path


# ----------------------------------------------------------------------------- lost data
def test_generate_writes_exactly_the_path_given_whatever_its_suffix(tmp_path, capsys):
    for name in ("di", "di.NPZ", "di.data"):
        assert trc(["generate", "--num-samples", "5", "--out", str(tmp_path / name)]) == 0
        assert len(datasets.load(tmp_path / name)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["di", "di.NPZ", "di.data"]  # no others


def test_sigterm_during_a_save_leaves_no_temp_file(tmp_path):
    """A job killed while a checkpoint is being written leaves neither a half-written file nor
    a hidden temp file (SIGTERM is handled as SIGINT is)."""
    code = textwrap.dedent(f"""
        import sys, time
        from trc_gym.files import atomic_write
        def slow(tmp):
            open(tmp, "wb").write(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(30)
        atomic_write({str(tmp_path / "ckpt.pt")!r}, slow)
    """)
    job = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                           cwd=ROOT)
    assert job.stdout.readline().strip() == "writing"
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) != 0
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- silent wrong answers
def test_a_policy_cannot_be_evaluated_on_another_env(planner, capsys):
    with pytest.raises(ValueError, match="is for 'TRC-DoubleIntegrator-v0', not"):
        trc_gym.evaluate(load_policy(planner, receding_horizon=True), VDP, 5)
    with pytest.raises(ValueError, match="is for 'TRC-DoubleIntegrator-v0', not"):
        trc_gym.evaluate(ExpertPolicy(DI, receding_horizon=True), "TRC-Pendulum-v0", 5)
    with pytest.raises(ValueError, match="with options"):
        trc_gym.evaluate(ExpertPolicy(DI), DI, 5, env_kwargs={"random_target": True})
    fails(["evaluate", str(planner), "--env", VDP, "--episodes", "3"], capsys,
          "trained on 'TRC-DoubleIntegrator-v0', not 'TRC-VanDerPol-v0'")


def test_evaluate_takes_the_env_from_the_checkpoint(tmp_path, capsys):
    policy = TRCPolicy.create(VDP, "small")
    path = policy.save(tmp_path / "vdp.pt")
    assert trc(["evaluate", str(path), "--episodes", "1"]) == 0
    assert capsys.readouterr().out.startswith(VDP)


def test_sb3_agent_cannot_be_evaluated_on_another_env(tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    from baselines import train_agent

    run = tmp_path / "ppo"
    train_agent("ppo", DI, 64, progress_bar=False, eval_freq=0, out_dir=run, n_envs=1,
                n_steps=64, batch_size=32, n_epochs=1)
    fails(["evaluate", str(run), "--env", VDP, "--episodes", "3"], capsys, "trained on")


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"epochs": -3}, {"lr": 0.0}, {"lr": -1e-3},
                                 {"cost_weight": float("nan")}, {"batch_size": 0},
                                 {"ema_decay": 1.5}, {"epochs": 2.5}, {"seed": -1}])
def test_bc_config_refuses_values_that_would_train_into_a_wrong_answer(bad):
    with pytest.raises(ValueError, match=f"BCConfig.{next(iter(bad))}"):
        BCConfig(**bad)


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"lr": 0.0}, {"kl_coef": float("inf")},
                                 {"group_size": 1}, {"antithetic": "no"}, {"algo": "ppo"}])
def test_grpo_config_refuses_bad_values(bad):
    with pytest.raises(ValueError, match=f"GRPOConfig.{next(iter(bad))}"):
        GRPOConfig(**bad)


def test_the_learning_rate_given_is_the_one_used_and_recorded(dataset):
    torch.manual_seed(0)
    policy = TRCPolicy.create(DI, "medium")
    from policies import train_bc
    from policies.bc import PRESET_LR

    data = datasets.load(dataset)
    train_bc(policy, data, BCConfig(epochs=1), progress=False)
    assert policy.metadata["bc"]["lr"] == PRESET_LR["medium"]  # None: the size's own
    train_bc(policy, data, BCConfig(epochs=1, lr=3e-4), progress=False)
    assert policy.metadata["bc"]["lr"] == 3e-4


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--lr", "0"], ["--cost-weight", "nan"]])
def test_cli_training_options_are_checked(argv, dataset, tmp_path, capsys):
    """tyro reports a config's ValueError as a parse error: exit 2, the option named, no
    traceback, nothing written."""
    with pytest.raises(SystemExit) as exit_:
        trc(["train-bc", "--data", str(dataset), "--out", str(tmp_path / "p.pt"), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and argv[0].removeprefix("--").replace("-", "_") in err
    assert not (tmp_path / "p.pt").exists()


def test_cli_refuses_zero_iterations(planner, tmp_path, capsys):
    with pytest.raises(SystemExit):
        trc(["finetune", "--init", str(planner), "--out", str(tmp_path / "q.pt"),
             "--iterations", "0"])
    assert "iterations" in capsys.readouterr().err and not (tmp_path / "q.pt").exists()


def tampered(path: Path, tmp_path: Path, **changes) -> Path:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for key, change in changes.items():
        arrays[key] = change(arrays[key])
    out = tmp_path / "tampered.npz"
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize(("changes", "match"), [
    ({"controls": lambda u: 100 * u}, "outside the bound"),
    ({"costs": lambda c: -c}, "costs of sample 0 are not the problem's cost"),
    ({"states": lambda s: s + 0.1}, "states of sample 0 are not the problem's rollout"),
    ({"metadata": lambda m: np.array("[1, 2]")}, "metadata must be a JSON object"),
    ({"metadata": lambda m: np.array(json.dumps({**json.loads(str(m)), "num_samples": "40"}))},
     "must be an integer"),
    ({"metadata": lambda m: np.array(json.dumps({**json.loads(str(m)), "env_kwargs": [1]}))},
     "must be a mapping"),
])
def test_a_dataset_is_checked_for_what_it_claims(dataset, tmp_path, changes, match, capsys):
    bad = tampered(dataset, tmp_path, **changes)
    with pytest.raises(ValueError, match=match):
        datasets.load(bad)
    fails(["train-bc", "--data", str(bad), "--out", str(tmp_path / "p.pt")], capsys, match)


def edited_checkpoint(planner: Path, tmp_path: Path, edit) -> Path:
    payload = torch.load(planner, weights_only=True)
    payload = edit(payload)
    out = tmp_path / "edited.pt"
    torch.save(payload, out)
    return out


def with_config(change):
    def edit(payload):
        return {**payload, "config": json.dumps(change(json.loads(payload["config"])))}
    return edit


@pytest.mark.parametrize(("edit", "match"), [
    (with_config(lambda c: [c]), "format"),
    (with_config(lambda c: {k: v for k, v in c.items() if k != "env_id"}), "env_id"),
    (with_config(lambda c: {**c, "env_kwargs": [1]}), "env_kwargs"),
    (with_config(lambda c: {**c, "env_kwargs": {"foo": 1}}), "no option"),
    (with_config(lambda c: {**c, "model": {**c["model"], "bogus": 1}}), "unknown field"),
    (with_config(lambda c: {**c, "model": {**c["model"], "latent_dim": "64"}}), "latent_dim"),
    (with_config(lambda c: {**c, "model": {**c["model"], "error_feedback": "no"}}),
     "error_feedback must be true or false"),
    (lambda p: {**p, "state_dict": {k: torch.full_like(v, float("nan"))
                                    for k, v in p["state_dict"].items()}}, "NaN"),
])
def test_an_edited_checkpoint_is_refused_with_its_reason(planner, tmp_path, edit, match,
                                                         capsys):
    bad = edited_checkpoint(planner, tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        load_policy(bad)
    fails(["evaluate", str(bad), "--episodes", "2"], capsys, match)


def test_plans_from_far_outside_the_state_box_raise_instead_of_returning_nan(planner):
    policy = load_policy(planner)
    with pytest.raises(ValueError, match=r"x0\[0\].*not finite"):
        policy.plan(np.array([[1e19, 0.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="float32's range"):
        policy.plan(np.array([[1e300, 0.0]]), np.zeros((1, 2)))


def test_reset_refuses_a_state_the_float32_observation_cannot_hold():
    env = gym.make(DI)
    with pytest.raises(ValueError, match=r"options\['state'\].*float32's range"):
        env.reset(options={"state": [1e300, 0.0]})
    env = gym.make(DI)  # a fresh one: Gymnasium's checker breaks after a failed first reset
    obs, _ = env.reset(options={"state": [1e30, 0.0]})  # large but representable
    _, reward, *_ = env.step(np.zeros(1, np.float32))
    assert np.all(np.isfinite(obs)) and np.isfinite(reward)


def test_the_obstacle_expert_names_the_start_it_was_given():
    with pytest.raises(ValueError, match="x0 has an entry of magnitude 1e"):
        trc_gym.expert_plan(NAV, np.full((1, 4), 1e300))


# --------------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("env_id", trc_gym.ENV_IDS)
def test_an_empty_batch_is_an_empty_answer(env_id):
    problem = trc_gym.make_problem(env_id)
    n, m, N = problem.n_state, problem.n_control, problem.horizon
    x0, U = np.zeros((0, n)), np.zeros((0, N, m))
    assert problem.rollout(x0, U).shape == (0, N + 1, n)
    assert problem.cost(x0, x0, U).shape == (0,)
    assert trc_gym.expert_plan(env_id, x0, x0).shape == (0, N, m)
    assert TRCPolicy.create(env_id, "small").plan(x0, x0).shape == (0, N, m)


# ----------------------------------------------------------------------- the CLI's input
def test_cli_reports_bad_json_options_in_one_line(dataset, tmp_path, capsys):
    out = str(tmp_path / "x.npz")
    fails(["generate", "--out", out, "--env-kwargs", '{"foo": 1}'], capsys, "no option(s)")
    fails(["generate", "--out", out, "--env-kwargs", "[1]"], capsys, "must be a JSON object")
    fails(["generate", "--out", out, "--env-kwargs", "{bad"], capsys, "must be a JSON object")
    fails(["train-bc", "--data", str(dataset), "--out", str(tmp_path / "p.pt"), "--model",
           '{"bogus": 1}'], capsys, "unknown field(s) ['bogus']")


def test_output_paths_are_checked_before_any_work(dataset, tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    fails(["generate", "--out", str(folder)], capsys, "is a folder")
    fails(["train-bc", "--data", str(dataset), "--out", str(folder)], capsys, "is a folder")
    fails(["train-bc", "--data", str(dataset), "--out", str(tmp_path / "model.run")], capsys,
          "its own log folder")
    fails(["train-baseline", "--out", str(tmp_path / "run"), "--episodes", "0"], capsys,
          "--episodes must be >= 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder"]  # nothing trained


def test_evaluate_checks_its_arguments():
    with pytest.raises(ValueError, match="must have plan"):
        trc_gym.evaluate(object(), DI, 5)
    with pytest.raises(ValueError, match="n_episodes must be an integer"):
        trc_gym.evaluate(RandomPolicy(DI), DI, 2.5)
    with pytest.raises(ValueError, match="unknown env id"):
        trc_gym.evaluate(RandomPolicy(DI), "TRC-Nope-v0", 5)


def test_without_the_rl_extra_the_baselines_say_what_to_install(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m.startswith(("stable_baselines3", "baselines."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # import fails
    import baselines

    with pytest.raises(ImportError, match=r"pip install -e '.\[rl\]'"):
        baselines.train_ppo  # noqa: B018
    fails(["train-baseline", "--out", str(tmp_path / "run"), "--timesteps", "64"], capsys,
          "the 'rl' extra")


def test_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        trc(["train-bc", "--help"])
    text = capsys.readouterr().out
    for option in ("--epochs", "--lr", "--cost-weight", "--batch-size", "--size", "--resume"):
        assert option in text
    assert "(default: 150)" in text and "developer" not in text


# -------------------------------------------------------------------------- properties
VALUES = [0.0, 1.0, -2.5, 1e3, 1e19, 1e39, 1e300, np.nan, np.inf, -np.inf]
DTYPES = [np.float64, np.float32, np.int64, np.complex128, np.bool_]


@st.composite
def arrays(draw):
    """Arrays of random shape (empty batches included), dtype and values (NaN, inf, extremes),
    or things that are not arrays at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([None, "a", [1, "b"], object(), [[1.0, 2.0], [3.0]]]))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    values = np.array(draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=8)))
    with np.errstate(invalid="ignore", over="ignore"):
        return np.resize(values, shape).astype(draw(st.sampled_from(DTYPES)))


ARRAYS = arrays()
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def finite_or_value_error(call, shape):
    try:
        out = call()
    except ValueError as exc:
        assert str(exc)
        return
    out = np.asarray(out)
    assert out.shape == shape and np.all(np.isfinite(out))


@PROPERTY
@given(x0=ARRAYS, U=ARRAYS)
def test_problem_rollout_and_cost_answer_or_refuse(x0, U):
    problem = trc_gym.make_problem(DI)
    B = np.shape(x0)[0] if isinstance(x0, np.ndarray) and np.ndim(x0) == 2 else 0
    finite_or_value_error(lambda: problem.rollout(x0, U), (B, 16, 2))
    finite_or_value_error(lambda: problem.cost(x0, x0, U), (B,))


@PROPERTY
@given(x0=ARRAYS)
def test_expert_and_planner_answer_or_refuse(x0):
    B = np.shape(x0)[0] if isinstance(x0, np.ndarray) and np.ndim(x0) == 2 else 1
    finite_or_value_error(lambda: trc_gym.expert_plan(DI, x0, np.zeros(2)), (B, 15, 1))
    finite_or_value_error(lambda: PLANNER.plan(x0, np.zeros(2)), (B, 15, 1))


@PROPERTY
@given(state=ARRAYS, action=ARRAYS)
def test_env_reset_and_step_answer_or_refuse(state, action):
    env = gym.make(DI)
    try:
        obs, _ = env.reset(options={"state": state})
    except ValueError:
        return
    assert obs.shape == (5,) and np.all(np.isfinite(obs))
    try:
        obs, reward, *_ = env.step(action)
    except ValueError:
        return
    assert obs.shape == (5,) and np.all(np.isfinite(obs)) and np.isfinite(reward)


@PROPERTY
@given(obs=ARRAYS)
def test_predict_answers_or_refuses(obs):
    single = isinstance(obs, np.ndarray) and obs.ndim == 1
    B = np.shape(obs)[0] if isinstance(obs, np.ndarray) and np.ndim(obs) == 2 else 1
    PLANNER.receding_horizon = True
    finite_or_value_error(lambda: PLANNER.predict(obs)[0], (1,) if single else (B, 1))


torch.manual_seed(0)
PLANNER = TRCPolicy.create(DI, "small")  # untrained: the checks, not the plans, are tested
