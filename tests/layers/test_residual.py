import pytest
import torch
from torchvision.models import resnet as tv_resnet

from cnnkit.layers.residual import BasicBlock, Bottleneck


def _tv_downsample(c_in: int, c_out: int, stride: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False), torch.nn.BatchNorm2d(c_out)
    )


def _randomize_norms(block: torch.nn.Module, generator: torch.Generator) -> None:
    # Non-trivial running statistics, so eval-mode outputs exercise every BN parameter.
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=generator))
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator))


@pytest.mark.parametrize(
    ("c_in", "channels", "stride", "has_projection"),
    [(8, 8, 1, False), (8, 16, 1, True), (8, 8, 2, True), (8, 16, 2, True)],
)
def test_basic_block_matches_torchvision(c_in, channels, stride, has_projection, generator):
    ours = BasicBlock(c_in, channels, stride=stride)
    assert (ours.downsample is not None) == has_projection
    downsample = _tv_downsample(c_in, channels, stride) if has_projection else None
    theirs = tv_resnet.BasicBlock(c_in, channels, stride=stride, downsample=downsample)
    _randomize_norms(theirs, generator)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, c_in, 9, 9, generator=generator)
    out = ours.eval()(x)
    assert out.shape == (2, channels, (9 - 1) // stride + 1, (9 - 1) // stride + 1)
    torch.testing.assert_close(out, theirs.eval()(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("c_in", "channels", "stride", "groups", "base_width", "dilation"),
    [(16, 4, 1, 1, 64, 1), (16, 8, 2, 1, 64, 1), (32, 8, 1, 4, 8, 2), (32, 8, 2, 1, 128, 1)],
)
def test_bottleneck_matches_torchvision(c_in, channels, stride, groups, base_width, dilation, generator):
    ours = Bottleneck(c_in, channels, stride=stride, dilation=dilation, groups=groups, base_width=base_width)
    projection = stride != 1 or c_in != 4 * channels
    assert (ours.downsample is not None) == projection
    theirs = tv_resnet.Bottleneck(
        c_in,
        channels,
        stride=stride,
        downsample=_tv_downsample(c_in, 4 * channels, stride) if projection else None,
        groups=groups,
        base_width=base_width,
        dilation=dilation,
    )
    _randomize_norms(theirs, generator)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, c_in, 10, 10, generator=generator)
    out = ours.eval()(x)
    assert out.shape == (2, 4 * channels, (10 - 1) // stride + 1, (10 - 1) // stride + 1)
    torch.testing.assert_close(out, theirs.eval()(x), rtol=0, atol=1e-6)


def test_bottleneck_width_follows_groups_and_base_width():
    # ResNeXt-50 32x4d, first stage: floor(64 * 4 / 64) * 32 = 128 channels in the grouped 3x3.
    block = Bottleneck(64, 64, groups=32, base_width=4)
    assert block.conv2.in_channels == block.conv2.out_channels == 128
    assert block.conv2.groups == 32
    assert block.conv3.out_channels == 256


def test_dilated_basic_block_keeps_resolution_and_widens_receptive_field():
    block = BasicBlock(4, 4, dilation=2).eval()
    assert block.conv1.padding == (2, 2) and block.conv2.dilation == (2, 2)
    for conv in (block.conv1, block.conv2):
        torch.nn.init.ones_(conv.weight)
    x = torch.zeros(1, 4, 13, 13)
    x[0, 0, 6, 6] = 1.0
    out = block(x)
    assert out.shape == x.shape
    # Two dilated 3x3 convs: receptive field 1 + 2 * 2 * (3 - 1) = 9, so the impulse reaches +-4 pixels.
    nonzero = (out[0, 0] - x[0, 0]).abs() > 0
    rows = nonzero.any(dim=1).nonzero().flatten()
    assert rows.min().item() == 2 and rows.max().item() == 10


def test_residual_branch_with_zeroed_last_norm_is_identity_after_relu():
    block = Bottleneck(16, 4).eval()
    torch.nn.init.zeros_(block.last_norm().weight)
    torch.nn.init.zeros_(block.last_norm().bias)
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))
