"""The ``device`` option: resolved and checked in one place, accepted by every stage, and
checkpoints load onto the device asked for. Every test runs on the CPU; a CUDA machine runs
`examples/benchmark_gpu.py`, which also checks its plans against the CPU's."""

import numpy as np
import pytest
import torch

from baselines import train_agent
from policies import BCConfig, GRPOConfig, TRCPolicy, load_policy
from trc_gym.cli import main as trc_main
from trc_gym.devices import resolve_device
from trc_gym.evaluation import held_out_starts

DI = "TRC-DoubleIntegrator-v0"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def test_names_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_auto_picks_cuda_where_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "", 3, None, "cpu:0 "])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match=r"device must be auto .*, cpu, cuda or cuda:K"):
        resolve_device(name)


@NO_CUDA
def test_cuda_without_cuda_is_refused_before_any_work(tmp_path, capsys):
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device(name)
    with pytest.raises(ValueError, match=r"BCConfig\.device"):
        BCConfig(device="cuda")
    with pytest.raises(ValueError, match=r"GRPOConfig\.device"):
        GRPOConfig(device="cuda:0")
    with pytest.raises(ValueError, match="device"):
        train_agent("ppo", DI, 64, device="cuda")
    with pytest.raises(SystemExit) as exit_:  # tyro reports a config's ValueError itself
        trc_main(["train-bc", "--data", str(tmp_path / "none.npz"), "--out",
                  str(tmp_path / "x.pt"), "--device", "cuda"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "Traceback" not in err
    assert trc_main(["evaluate", "zero", "--episodes", "4", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err


def test_checkpoint_loads_onto_the_device_asked_for(tmp_path, capsys):
    policy = TRCPolicy.create(DI, "small")
    path = policy.save(tmp_path / "p.pt")
    loaded = load_policy(path, device="auto")
    assert loaded.device == resolve_device("auto")
    assert load_policy(path).device == torch.device("cpu")
    x0, target = held_out_starts(DI, 8)
    np.testing.assert_array_equal(loaded.to("cpu").plan(x0, target), policy.plan(x0, target))
    assert trc_main(["evaluate", str(path), "--episodes", "4", "--device", "cpu"]) == 0
    assert trc_main(["evaluate", str(path), "--episodes", "4", "--device", "tpu"]) == 2
    assert "--device must be auto" in capsys.readouterr().err


def test_generation_takes_a_device_and_plans_as_on_the_cpu(tmp_path):
    from trc_gym import datasets
    from trc_gym.envs import make_expert

    expert = make_expert("TRC-VanDerPol-v0")
    assert expert.device == torch.device("cpu") and expert.to("auto") is expert
    assert expert.device == resolve_device("auto")
    x0, target = held_out_starts("TRC-VanDerPol-v0", 3)
    np.testing.assert_allclose(expert.plan(x0, target),
                               make_expert("TRC-VanDerPol-v0").plan(x0, target), rtol=1e-9,
                               atol=1e-9)
    data = datasets.generate(DI, 20, seed=1, device="cpu", progress=False)
    np.testing.assert_array_equal(data.controls,
                                  datasets.generate(DI, 20, seed=1, progress=False).controls)
    with pytest.raises(ValueError, match=r"DataConfig\.device"):
        datasets.generate(DI, 20, device="gpu", progress=False)
    assert trc_main(["generate", "--num-samples", "8", "--device", "cpu", "--out",
                     str(tmp_path / "d.npz")]) == 0
