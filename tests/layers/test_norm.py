"""LayerNorm2d against manual normalisation over channels and torchvision's ConvNeXt LayerNorm2d."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.convnext import LayerNorm2d as TorchvisionLayerNorm2d

from cnnkit.layers import LayerNorm2d


def test_normalises_over_channels_at_each_position(generator):
    layer = LayerNorm2d(5).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, generator=generator))
        layer.bias.copy_(torch.randn(5, generator=generator))
    x = 3.0 * torch.randn(2, 5, 4, 3, generator=generator, dtype=torch.float64) + 1.5
    xn = x.numpy()
    mean = xn.mean(axis=1, keepdims=True)
    var = ((xn - mean) ** 2).mean(axis=1, keepdims=True)  # biased variance, as LayerNorm uses
    gamma = layer.weight.detach().numpy()[None, :, None, None]
    beta = layer.bias.detach().numpy()[None, :, None, None]
    expected = (xn - mean) / np.sqrt(var + 1e-6) * gamma + beta
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    plain = LayerNorm2d(5, elementwise_affine=False).double()(x).numpy()
    np.testing.assert_allclose(plain.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(plain.var(axis=1), (var / (var + 1e-6))[:, 0], rtol=1e-10)


def test_equals_torchvision_convnext_layernorm(generator):
    theirs = TorchvisionLayerNorm2d(8, eps=1e-6)
    with torch.no_grad():
        theirs.weight.copy_(torch.randn(8, generator=generator))
        theirs.bias.copy_(torch.randn(8, generator=generator))
    ours = LayerNorm2d(8)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 8, 6, 6, generator=generator)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
