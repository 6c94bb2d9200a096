import contextlib

import numpy as np
import pytest
import torch

import trc_gym  # noqa: F401  (registers the envs)

DI = "TRC-DoubleIntegrator-v0"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def bc_interrupted_in_third_epoch():
    """A context manager: cloning inside it raises KeyboardInterrupt in its third epoch's
    validation, as a run stopped by Ctrl-C does, and the block asserts that it did."""
    import policies.bc

    @contextlib.contextmanager
    def interrupted():
        calls, real = [], policies.bc.validation_gap

        def crash_in_third_epoch(*args):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(*args)

        with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
            patch.setattr(policies.bc, "validation_gap", crash_in_third_epoch)
            yield

    return interrupted
