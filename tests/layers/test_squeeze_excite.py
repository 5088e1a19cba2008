"""SqueezeExcite against a hand computation and torchvision.ops.SqueezeExcitation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from cnnkit.layers import SqueezeExcite


def test_equals_hand_computation(generator):
    layer = SqueezeExcite(6, 2).double()
    x = torch.randn(2, 6, 5, 4, generator=generator, dtype=torch.float64)
    xn = x.numpy()
    w1, b1 = layer.fc1.weight.detach().numpy()[:, :, 0, 0], layer.fc1.bias.detach().numpy()
    w2, b2 = layer.fc2.weight.detach().numpy()[:, :, 0, 0], layer.fc2.bias.detach().numpy()
    squeezed = xn.mean(axis=(2, 3))  # (N, C)
    hidden = np.maximum(squeezed @ w1.T + b1, 0.0)
    gate = 1.0 / (1.0 + np.exp(-(hidden @ w2.T + b2)))
    expected = xn * gate[:, :, None, None]
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("act", "gate"), [(nn.ReLU, nn.Sigmoid), (nn.SiLU, nn.Sigmoid), (nn.ReLU, nn.Hardsigmoid)]
)
def test_outputs_equal_torchvision_after_loading_its_state_dict(act, gate, generator):
    theirs = SqueezeExcitation(16, 4, activation=act, scale_activation=gate)
    ours = SqueezeExcite(16, 4, act_layer=act, gate_layer=gate)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 16, 7, 7, generator=generator)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    assert sum(p.numel() for p in ours.parameters()) == 16 * 4 + 4 + 4 * 16 + 16
