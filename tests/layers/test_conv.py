"""ConvNormAct and DepthwiseSeparableConv against the NumPy reference and torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from cnnkit.geometry import conv_params, depthwise_separable_params
from cnnkit.layers import ConvNormAct, DepthwiseSeparableConv
from cnnkit.reference import conv2d_forward, depthwise_separable_conv2d


def randomize_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and affine parameters, so eval outputs exercise all of them."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=generator))
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator))


def bn_eval(x: np.ndarray, bn: nn.BatchNorm2d) -> np.ndarray:
    """Eval-mode batch norm by hand: ``(x - mean) / sqrt(var + eps) * gamma + beta`` per channel."""
    shape = (1, -1, 1, 1)
    mean = bn.running_mean.double().numpy().reshape(shape)
    var = bn.running_var.double().numpy().reshape(shape)
    gamma = bn.weight.detach().double().numpy().reshape(shape)
    beta = bn.bias.detach().double().numpy().reshape(shape)
    return (x - mean) / np.sqrt(var + bn.eps) * gamma + beta


def numpy_of(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "groups", "dilation", "size"),
    [(3, 8, 3, 1, 1, 1, 9), (4, 6, 5, 2, 2, 1, 11), (6, 6, 3, 1, 6, 2, 10), (2, 4, 1, 2, 1, 1, 7)],
)
def test_conv_norm_act_equals_reference_conv_bn_relu(
    c_in, c_out, kernel, stride, groups, dilation, size, generator
):
    layer = ConvNormAct(c_in, c_out, kernel, stride, groups=groups, dilation=dilation).double().eval()
    randomize_norms(layer, generator)
    x = torch.randn(2, c_in, size, size, generator=generator, dtype=torch.float64)
    pad = dilation * (kernel - 1) // 2
    conv = conv2d_forward(numpy_of(x), numpy_of(layer[0].weight), None, stride, pad, dilation, groups)
    expected = np.maximum(bn_eval(conv, layer[1]), 0.0)
    np.testing.assert_allclose(numpy_of(layer(x)), expected, rtol=1e-10, atol=1e-10)
    # "same" padding: ceil(size / stride) outputs per axis for odd kernels
    assert layer(x).shape[-1] == -(-size // stride)
    assert sum(p.numel() for p in layer[0].parameters()) == conv_params(
        c_in, c_out, kernel, bias=False, groups=groups
    )


def test_conv_norm_act_without_norm_has_bias_and_matches_reference(generator):
    layer = ConvNormAct(3, 5, 3, padding=0, norm_layer=None, act_layer=None).double()
    assert len(layer) == 1 and layer[0].bias is not None
    x = torch.randn(1, 3, 6, 7, generator=generator, dtype=torch.float64)
    expected = conv2d_forward(numpy_of(x), numpy_of(layer[0].weight), numpy_of(layer[0].bias))
    np.testing.assert_allclose(numpy_of(layer(x)), expected, rtol=1e-10, atol=1e-10)
    assert isinstance(ConvNormAct(3, 5, act_layer=nn.GELU)[2], nn.GELU)


@pytest.mark.parametrize(("kernel", "stride", "groups"), [(3, 1, 1), (3, 2, 1), (5, 1, 4), (1, 1, 1)])
def test_conv_norm_act_state_dict_and_outputs_equal_torchvision(kernel, stride, groups, generator):
    ours = ConvNormAct(8, 16, kernel, stride, groups=groups).eval()
    theirs = Conv2dNormActivation(8, 16, kernel, stride, groups=groups).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    randomize_norms(theirs, generator)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 8, 12, 12, generator=generator)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_depthwise_separable_equals_reference(generator):
    layer = DepthwiseSeparableConv(4, 6, 3, stride=2, norm_layer=None, act_layer=None).double()
    x = torch.randn(2, 4, 9, 9, generator=generator, dtype=torch.float64)
    dw, pw = layer.dw[0], layer.pw[0]
    assert dw.groups == 4 and dw.weight.shape == (4, 1, 3, 3) and pw.weight.shape == (6, 4, 1, 1)
    expected = depthwise_separable_conv2d(
        numpy_of(x), numpy_of(dw.weight), numpy_of(pw.weight), numpy_of(dw.bias), numpy_of(pw.bias), 2, 1
    )
    np.testing.assert_allclose(numpy_of(layer(x)), expected, rtol=1e-10, atol=1e-10)
    assert layer(x).shape == (2, 6, 5, 5)


def test_depthwise_separable_with_norm_and_act_and_its_parameter_count(generator):
    layer = DepthwiseSeparableConv(8, 16, 3).double().eval()
    randomize_norms(layer, generator)
    x = torch.randn(1, 8, 7, 7, generator=generator, dtype=torch.float64)
    dw = np.maximum(
        bn_eval(conv2d_forward(numpy_of(x), numpy_of(layer.dw[0].weight), padding=1, groups=8), layer.dw[1]),
        0,
    )
    pw = np.maximum(bn_eval(conv2d_forward(dw, numpy_of(layer.pw[0].weight)), layer.pw[1]), 0)
    np.testing.assert_allclose(numpy_of(layer(x)), pw, rtol=1e-10, atol=1e-10)
    conv_weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Conv2d))
    assert conv_weights == depthwise_separable_params(8, 16, 3) == 8 * 9 + 8 * 16
