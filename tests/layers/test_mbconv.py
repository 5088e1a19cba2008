"""MBConv and make_divisible against torchvision's EfficientNet block and hand-computed roundings."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.efficientnet import MBConv as TorchvisionMBConv
from torchvision.models.efficientnet import MBConvConfig

from cnnkit.layers import MBConv, SqueezeExcite, make_divisible


@pytest.mark.parametrize(
    ("value", "divisor", "min_value", "expected"),
    [
        (32 * 1.1, 8, None, 32),  # 35.2 rounds down to 32 (within 10%)
        (40 * 1.1, 8, None, 48),  # 44 is halfway: rounds up
        (112 * 1.4, 8, None, 160),
        (10.0, 8, None, 16),  # 8 would lose 20%: one more divisor
        (3.0, 8, None, 8),  # never below the divisor
        (3.0, 8, 4, 4),  # ... unless min_value allows it
        (100.0, 16, None, 96),
    ],
)
def test_make_divisible(value, divisor, min_value, expected):
    assert make_divisible(value, divisor, min_value) == expected


@pytest.mark.parametrize(
    ("expand", "kernel", "stride", "c_in", "c_out"),
    [(1, 3, 1, 32, 16), (6, 3, 2, 16, 24), (6, 5, 1, 40, 40), (6, 5, 2, 40, 80)],
)
def test_outputs_equal_torchvision_mbconv(expand, kernel, stride, c_in, c_out, generator):
    torch.manual_seed(0)
    theirs = TorchvisionMBConv(
        MBConvConfig(expand, kernel, stride, c_in, c_out, 1), 0.0, nn.BatchNorm2d
    ).eval()
    ours = MBConv(c_in, c_out, kernel, stride, expand_ratio=expand).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, c_in, 9, 9, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    assert ours(x).shape == (2, c_out, -(-9 // stride), -(-9 // stride))


def test_layout_expansion_squeeze_and_residual():
    expanded = MBConv(24, 24, expand_ratio=6)
    assert [type(m).__name__ for m in expanded.block] == [
        "ConvNormAct",
        "ConvNormAct",
        "SqueezeExcite",
        "ConvNormAct",
    ]
    assert expanded.block[0][0].out_channels == 144
    assert expanded.block[1][0].groups == 144  # depthwise
    assert expanded.block[2].fc1.out_channels == 24 // 4  # SE squeezes relative to the block input
    assert len(expanded.block[3]) == 2  # linear bottleneck: conv + norm, no activation
    assert expanded.use_residual
    assert len(MBConv(32, 16, expand_ratio=1).block) == 3  # no expansion conv when the width is kept
    assert not MBConv(24, 24, stride=2).use_residual
    assert not MBConv(24, 40).use_residual
    no_se = MBConv(24, 24, se_ratio=0)
    assert not any(isinstance(m, SqueezeExcite) for m in no_se.modules())


def test_residual_branch_and_stochastic_depth(generator):
    block = MBConv(8, 8, expand_ratio=4, drop_path=1.0)
    x = torch.randn(2, 8, 6, 6, generator=generator)
    block.train()
    torch.testing.assert_close(block(x), x)  # the branch is always dropped: identity
    block.eval()
    nn.init.zeros_(block.block[-1][1].weight)  # projection BN scale 0: the branch outputs zero
    torch.testing.assert_close(block(x), x)
    nn.init.ones_(block.block[-1][1].weight)
    assert not torch.allclose(block(x), x)


def test_rejects_bad_stride():
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        MBConv(8, 8, stride=3)
