"""ConvNeXtBlock against torchvision's CNBlock, plus layer scale and stochastic depth behaviour."""

from __future__ import annotations

import torch
from torchvision.models.convnext import CNBlock

from cnnkit.layers import ConvNeXtBlock, Permute


def test_outputs_equal_torchvision_cnblock(generator):
    torch.manual_seed(0)
    theirs = CNBlock(16, layer_scale=0.5, stochastic_depth_prob=0.0).eval()
    ours = ConvNeXtBlock(16, layer_scale=0.5).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 16, 9, 7, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_layout_and_parameter_count():
    block = ConvNeXtBlock(8)
    dw, norm, fc1, fc2 = block.block[0], block.block[2], block.block[3], block.block[5]
    assert (dw.kernel_size, dw.padding, dw.groups) == ((7, 7), (3, 3), 8)
    assert norm.normalized_shape == (8,) and norm.eps == 1e-6
    assert (fc1.in_features, fc1.out_features, fc2.out_features) == (8, 32, 8)
    expected = (8 * 49 + 8) + 2 * 8 + (8 * 32 + 32) + (32 * 8 + 8) + 8
    assert sum(p.numel() for p in block.parameters()) == expected


def test_layer_scale_starts_the_block_near_identity(generator):
    block = ConvNeXtBlock(8, layer_scale=1e-6).eval()
    assert block.layer_scale.shape == (8, 1, 1)
    assert torch.all(block.layer_scale == 1e-6)
    x = torch.randn(2, 8, 5, 5, generator=generator)
    with torch.no_grad():
        assert (block(x) - x).abs().max() < 1e-4
        block.layer_scale.fill_(1.0)
        assert (block(x) - x).abs().max() > 1e-2


def test_stochastic_depth_drops_the_whole_branch_in_training(generator):
    block = ConvNeXtBlock(8, layer_scale=1.0, drop_path=1.0)
    x = torch.randn(2, 8, 5, 5, generator=generator)
    torch.testing.assert_close(block.train()(x), x)
    assert not torch.allclose(block.eval()(x), x)


def test_permute_round_trip(generator):
    x = torch.randn(2, 3, 4, 5, generator=generator)
    assert Permute((0, 2, 3, 1))(x).shape == (2, 4, 5, 3)
    torch.testing.assert_close(Permute((0, 3, 1, 2))(Permute((0, 2, 3, 1))(x)), x)
