"""Data-parallel training: two processes under torchrun (gloo on the CPU) give what one process
gives with the same global batch, to float rounding of the gradient sums; resuming works the
same; rank 0 alone writes the files."""

import numpy as np
import pytest
import torch

from policies import BCConfig, TRCPolicy, train_bc
from policies.policy import load_checkpoint
from trc_gym import datasets
from trc_gym.cli import main as trc_main
from trc_gym.files import read_csv_rows

DI = "TRC-DoubleIntegrator-v0"
# 270 training plans in batches of 67: parts of 34 and 33, and a last batch of 2 (1 and 1).
BC_ARGS = ["--epochs", "3", "--batch-size", "67", "--warmup-steps", "5", "--device", "cpu",
           "--no-progress"]
RL_ARGS = ["--iterations", "3", "--starts-per-iteration", "33", "--group-size", "8",
           "--eval-every", "1", "--eval-starts", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The dataset, and one-process cloning and fine-tuning runs from it."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "data.npz"
    datasets.save(datasets.generate(DI, 300, seed=1, progress=False), data)
    assert trc_main(["train-bc", "--data", str(data), "--out", str(root / "bc1.pt"),
                     *BC_ARGS]) == 0
    assert trc_main(["finetune", "--init", str(root / "bc1.pt"), "--out", str(root / "rl1.pt"),
                     *RL_ARGS]) == 0
    return root


def assert_same_weights(path_a, path_b) -> None:
    a, b = (load_checkpoint(p)["state_dict"] for p in (path_a, path_b))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_two_process_cloning_equals_one_process(runs):
    out = runs / "bc2.pt"
    assert trc_main(["train-bc", "--data", str(runs / "data.npz"), "--out", str(out),
                     "--nproc", "2", *BC_ARGS]) == 0
    assert_same_weights(runs / "bc1.pt", out)
    one, two = (read_csv_rows(runs / f"bc{k}.run" / "bc_log.csv") for k in (1, 2))
    assert len(two) == 3  # one row per epoch: only rank 0 writes
    np.testing.assert_allclose([r["val_gap"] for r in two], [r["val_gap"] for r in one],
                               rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose([r["train_loss"] for r in two], [r["train_loss"] for r in one],
                               rtol=1e-4)


def test_two_process_finetuning_equals_one_process(runs):
    out = runs / "rl2.pt"
    assert trc_main(["finetune", "--init", str(runs / "bc1.pt"), "--out", str(out),
                     "--nproc", "2", *RL_ARGS]) == 0
    assert_same_weights(runs / "rl1.pt", out)
    one, two = (read_csv_rows(runs / f"rl{k}.run" / "rl_log.csv") for k in (1, 2))
    assert len(two) == 4  # the cloned planner's row and one per iteration
    for key in ("val_cost", "kl", "clip_fraction"):
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=1e-3,
                                   atol=1e-9, err_msg=key)
    assert [r["env_steps"] for r in two] == [r["env_steps"] for r in one]


def test_two_processes_resume_a_one_process_run(runs, bc_interrupted_in_third_epoch):
    data = datasets.load(runs / "data.npz")
    torch.manual_seed(0)
    with bc_interrupted_in_third_epoch():
        train_bc(TRCPolicy.create(DI, "small"), data,
                 BCConfig(epochs=3, batch_size=67, warmup_steps=5, device="cpu"),
                 run_dir=runs / "resumed.run", progress=False)
    assert len(read_csv_rows(runs / "resumed.run" / "bc_log.csv")) == 2
    assert trc_main(["train-bc", "--data", str(runs / "data.npz"), "--out",
                     str(runs / "resumed.pt"), "--resume", "--nproc", "2", *BC_ARGS]) == 0
    assert_same_weights(runs / "bc1.pt", runs / "resumed.pt")
    assert len(read_csv_rows(runs / "resumed.run" / "bc_log.csv")) == 3


def test_nproc_is_checked(runs, capsys):
    assert trc_main(["train-bc", "--data", str(runs / "data.npz"), "--out",
                     str(runs / "x.pt"), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
