import os

import pytest
import torch

# Two cores on CI: keep intra-op threads bounded so parallel helpers and tests do not oversubscribe.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
