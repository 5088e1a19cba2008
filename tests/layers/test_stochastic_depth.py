"""StochasticDepth: identity in eval, drop statistics in training, equal to torchvision's draws."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import StochasticDepth as TorchvisionStochasticDepth

from cnnkit.layers import StochasticDepth


def test_identity_in_eval_and_at_zero_probability(generator):
    x = torch.randn(4, 3, 5, 5, generator=generator)
    assert torch.equal(StochasticDepth(0.7).eval()(x), x)
    assert torch.equal(StochasticDepth(0.0).train()(x), x)
    assert torch.equal(StochasticDepth(1.0).train()(x), torch.zeros_like(x))


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_same_draws_as_torchvision_with_the_same_seed(mode):
    x = torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    ours = StochasticDepth(0.3, mode).train()(x)
    torch.manual_seed(5)
    theirs = TorchvisionStochasticDepth(0.3, mode).train()(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_row_mode_drop_rate_and_scaling():
    p, n = 0.3, 20_000
    torch.manual_seed(0)
    out = StochasticDepth(p, "row").train()(torch.ones(n, 2, 2, 2))
    per_row = out.flatten(1)
    # every sample is either dropped (all zeros) or kept and scaled by 1 / (1 - p)
    kept = (per_row == 1.0 / (1.0 - p)).all(dim=1)
    dropped = (per_row == 0.0).all(dim=1)
    assert bool((kept | dropped).all())
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped.float().mean().item() - p) < 4 * sigma
    assert abs(out.mean().item() - 1.0) < 4 * sigma / (1 - p)  # the expectation is unchanged


def test_batch_mode_drops_all_or_nothing():
    torch.manual_seed(0)
    layer = StochasticDepth(0.5, "batch").train()
    outcomes = set()
    for _ in range(40):
        out = layer(torch.ones(8, 3))
        assert len(out.unique()) == 1
        outcomes.add(out[0, 0].item())
    assert outcomes == {0.0, 2.0}


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        StochasticDepth(1.5)
    with pytest.raises(ValueError, match="mode"):
        StochasticDepth(0.1, mode="col")
