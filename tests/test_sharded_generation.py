"""`trc generate --shard i/K` writes slices of one run; `trc merge` joins them into the dataset
the unsharded run writes."""

import numpy as np
import pytest

from trc_gym import datasets
from trc_gym.cli import main as trc_main

DI = "TRC-DoubleIntegrator-v0"


def assert_same_dataset(merged: datasets.Demonstrations, whole: datasets.Demonstrations,
                        exact_plans: bool) -> None:
    """The arrays of two datasets agree: the starts, targets and plans exactly (or to 1e-12
    where the shards solved some in other batches), the states and costs to float64 rounding
    (MKL's matrix products round by memory alignment), the metadata exactly."""
    assert merged.metadata == whole.metadata
    for key in ("initial_states", "target_states", "controls"):
        if exact_plans:
            np.testing.assert_array_equal(getattr(merged, key), getattr(whole, key))
        else:
            np.testing.assert_allclose(getattr(merged, key), getattr(whole, key), rtol=1e-12,
                                       atol=1e-12)
    for key in ("states", "costs"):
        np.testing.assert_allclose(getattr(merged, key), getattr(whole, key), rtol=1e-12,
                                   atol=1e-12)


def test_cli_shards_merge_into_the_unsharded_dataset(tmp_path, capsys):
    common = ["--env", DI, "--num-samples", "1000", "--seed", "4"]
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"part_{i}.npz")
        assert trc_main(["generate", *common, "--shard", f"{i}/3", "--out", str(parts[-1])]) == 0
    assert trc_main(["generate", *common, "--out", str(tmp_path / "whole.npz")]) == 0
    sizes = [len(datasets.load(p)) for p in parts]
    assert sizes == [512, 256, 232]  # the run's 4 chunks of 256 plans, whole
    # In any order:
    assert trc_main(["merge", *map(str, parts[::-1]), "--out", str(tmp_path / "all.npz")]) == 0
    assert "from 3 shards" in capsys.readouterr().out
    assert_same_dataset(datasets.load(tmp_path / "all.npz"), datasets.load(tmp_path / "whole.npz"),
                        exact_plans=True)


def test_shards_with_trajectory_starts_merge_into_the_unsharded_dataset():
    run = dict(num_samples=900, seed=2, trajectory_starts=0.4, chunk_size=64, progress=False)
    whole = datasets.generate(DI, **run)
    parts = [datasets.generate(DI, **run, shard=(i, 4)) for i in range(4)]
    assert all(p.metadata["shard"]["count"] == 4 for p in parts)
    # Each shard solves the starts on its own box samples' trajectories: balanced work.
    assert all(len(p) > 900 / 4 * 0.6 for p in parts)
    assert_same_dataset(datasets.merge(parts), whole, exact_plans=False)


def test_shard_and_merge_errors(tmp_path, capsys):
    out = str(tmp_path / "x.npz")
    for shard, message in (("5/3", "0 <= i < K"), ("1-3", "i/K"), ("0/9", "at most 4 shards")):
        assert trc_main(["generate", "--num-samples", "1000", "--shard", shard, "--out", out]) == 2
        assert message in capsys.readouterr().err
    run = dict(num_samples=600, seed=1, progress=False)
    parts = [datasets.generate(DI, **run, shard=(i, 3)) for i in range(3)]
    with pytest.raises(ValueError, match=r"shards 0\.\.2 once each"):
        datasets.merge(parts[:2])
    with pytest.raises(ValueError, match=r"shards 0\.\.2 once each"):
        datasets.merge([parts[0], parts[0], parts[1]])
    other_seed = datasets.generate(DI, **{**run, "seed": 2}, shard=(2, 3))
    with pytest.raises(ValueError, match="seed"):
        datasets.merge([parts[0], parts[1], other_seed])
    with pytest.raises(ValueError, match="is a whole dataset"):
        datasets.merge([datasets.generate(DI, **run)])
    forged = parts[1].subset(np.arange(len(parts[1])))
    forged.initial_states = forged.initial_states[::-1].copy()
    with pytest.raises(ValueError, match="does not hold the starts"):
        datasets.merge([parts[0], forged, parts[2]])
