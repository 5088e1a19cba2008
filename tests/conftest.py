import os

import pytest
import torch

# Tests use small tensors, where intra-op threads cost more than they give and oversubscribe a shared
# machine badly; CNNKIT_TEST_THREADS raises the count.
torch.set_num_threads(int(os.environ.get("CNNKIT_TEST_THREADS", "1")))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
