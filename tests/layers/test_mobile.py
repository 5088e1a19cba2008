from functools import partial

import pytest
import torch
from torchvision.models import mobilenetv2 as tv_v2
from torchvision.models import mobilenetv3 as tv_v3

from cnnkit.layers.mobile import InvertedResidual, MobileNetV3Block


def _randomize_norms(module: torch.nn.Module, generator: torch.Generator) -> None:
    # Non-trivial BN statistics and affine parameters, so eval outputs exercise every parameter.
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def _assert_same_as_torchvision(ours, theirs, x, generator):
    _randomize_norms(theirs, generator)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    out = ours.eval()(x)
    torch.testing.assert_close(out, theirs.eval()(x), rtol=0, atol=1e-5)
    return out


@pytest.mark.parametrize(
    ("c_in", "c_out", "stride", "t", "residual"),
    [(16, 16, 1, 6, True), (16, 24, 2, 6, False), (32, 16, 1, 1, False), (24, 24, 2, 6, False)],
)
def test_inverted_residual_matches_torchvision(c_in, c_out, stride, t, residual, generator):
    ours = InvertedResidual(c_in, c_out, stride, expand_ratio=t)
    assert ours.use_residual == residual
    assert len(ours.conv) == (4 if t != 1 else 3)  # no expansion conv when t == 1
    x = torch.randn(2, c_in, 9, 9, generator=generator)
    out = _assert_same_as_torchvision(ours, tv_v2.InvertedResidual(c_in, c_out, stride, t), x, generator)
    assert out.shape == (2, c_out, (9 - 1) // stride + 1, (9 - 1) // stride + 1)


def test_inverted_residual_rejects_stride_3():
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual(8, 8, 3, expand_ratio=6)


def test_inverted_residual_adds_the_input_when_shapes_match():
    block = InvertedResidual(8, 8, 1, expand_ratio=6).eval()
    with torch.no_grad():
        block.conv[-1].weight.zero_()  # final BN scale 0: the branch outputs its bias, zero
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


_BN = partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.01)


@pytest.mark.parametrize(
    ("c_in", "k", "c_exp", "c_out", "use_se", "act", "stride", "dilation"),
    [
        (16, 3, 16, 16, True, "RE", 2, 1),  # Small's first block: no expansion, SE
        (24, 5, 72, 40, True, "RE", 2, 1),
        (80, 3, 184, 80, False, "HS", 1, 1),  # residual, hard-swish
        (112, 5, 672, 160, True, "HS", 2, 2),  # dilated: stride replaced by dilation
    ],
)
def test_mobilenet_v3_block_matches_torchvision(
    c_in, k, c_exp, c_out, use_se, act, stride, dilation, generator
):
    act_layer = torch.nn.Hardswish if act == "HS" else torch.nn.ReLU
    ours = MobileNetV3Block(c_in, c_exp, c_out, k, stride, dilation, use_se, act_layer, _BN)
    cnf = tv_v3.InvertedResidualConfig(c_in, k, c_exp, c_out, use_se, act, stride, dilation, 1.0)
    theirs = tv_v3.InvertedResidual(cnf, _BN)
    x = torch.randn(2, c_in, 9, 9, generator=generator)
    out = _assert_same_as_torchvision(ours, theirs, x, generator)
    assert ours.stride == (1 if dilation > 1 else stride)
    assert out.shape == (2, c_out, (9 - 1) // ours.stride + 1, (9 - 1) // ours.stride + 1)
    assert ours.use_residual == (stride == 1 and c_in == c_out)


def test_mobilenet_v3_block_se_width_is_a_quarter_rounded_to_8():
    block = MobileNetV3Block(40, 120, 40, 5, 1, use_se=True)
    se = block.block[2]
    assert se.fc1.out_channels == 32  # make_divisible(120 // 4 = 30, 8)
    assert isinstance(se.gate, torch.nn.Hardsigmoid)
