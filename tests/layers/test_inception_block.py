import pytest
import torch
from torchvision.models import inception as tv_inception
from torchvision.models.googlenet import Inception as TvInception

from cnnkit.layers.inception import (
    BasicConv,
    InceptionA,
    InceptionB,
    InceptionBlock,
    InceptionC,
    InceptionD,
    InceptionE,
)


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


def test_basic_conv_is_conv_bn_relu_with_tf_epsilon(generator):
    block = BasicConv(3, 8, (1, 7), stride=1, padding=(0, 3))
    assert block.conv.bias is None and block.conv.kernel_size == (1, 7)
    assert block.bn.eps == pytest.approx(1e-3)
    x = torch.randn(2, 3, 9, 11, generator=generator)
    out = block.eval()(x)
    expected = torch.relu(block.conv(x) / (1 + 1e-3) ** 0.5)  # fresh BN: mean 0, var 1, affine 1/0
    assert out.shape == (2, 8, 9, 11)
    torch.testing.assert_close(out, expected)


def test_inception_block_concatenates_four_branches_like_torchvision(generator):
    args = (192, 64, 96, 128, 16, 32, 32)  # inception3a
    ours = InceptionBlock(*args)
    assert ours.out_channels == 64 + 128 + 32 + 32
    theirs = TvInception(*args)
    x = torch.randn(2, 192, 7, 7, generator=generator)
    out = _assert_same_as_torchvision(ours, theirs, x, generator)
    assert out.shape == (2, 256, 7, 7)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize(
    ("ours", "theirs", "c_in", "size", "c_out", "size_out"),
    [
        (lambda: InceptionA(192, 32), lambda: tv_inception.InceptionA(192, 32), 192, 9, 256, 9),
        (lambda: InceptionB(288), lambda: tv_inception.InceptionB(288), 288, 9, 768, 4),
        (lambda: InceptionC(768, 64), lambda: tv_inception.InceptionC(768, 64), 768, 7, 768, 7),
        (lambda: InceptionD(768), lambda: tv_inception.InceptionD(768), 768, 7, 1280, 3),
        (lambda: InceptionE(1280), lambda: tv_inception.InceptionE(1280), 1280, 3, 2048, 3),
    ],
    ids=["A", "B", "C", "D", "E"],
)
def test_v3_blocks_match_torchvision(ours, theirs, c_in, size, c_out, size_out, generator):
    ours, theirs = ours(), theirs()
    x = torch.randn(1, c_in, size, size, generator=generator)
    out = _assert_same_as_torchvision(ours, theirs, x, generator)
    assert out.shape == (1, c_out, size_out, size_out)
    assert ours.out_channels == c_out


def test_factorised_7x7_costs_two_n_weights_per_channel_pair():
    # 1x7 + 7x1 instead of 7x7: 14 weights per (c_in, c_out) pair instead of 49.
    block = InceptionC(768, channels_7x7=128)
    assert block.branch7x7_2.conv.weight.shape == (128, 128, 1, 7)
    assert block.branch7x7_3.conv.weight.shape == (192, 128, 7, 1)
