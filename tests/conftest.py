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
