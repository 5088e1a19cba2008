"""Inference blocks: a ConvNeXt block with its LayerNorm affine and layer scale folded computes the same."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit.export import FoldedConvNeXtBlock, inference_blocks, optimize_for_inference
from cnnkit.layers import ConvNeXtBlock
from cnnkit.models.convnext import ConvNeXt


def randomize(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial LayerNorm affines and layer scales (the defaults 1, 0 and 1e-6 would hide a bad fold)."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.data = torch.rand(module.weight.shape, generator=generator) + 0.5
            module.bias.data = torch.randn(module.bias.shape, generator=generator) * 0.3
        if isinstance(module, ConvNeXtBlock):
            module.layer_scale.data = torch.rand(module.layer_scale.shape, generator=generator) + 0.1
    return model.eval()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_folded_block_matches_the_block(layout, generator):
    block = randomize(ConvNeXtBlock(24), generator)
    x = torch.randn(2, 24, 9, 7, generator=generator).contiguous(memory_format=layout)
    folded = FoldedConvNeXtBlock(block).eval()
    with torch.no_grad():
        expected, got = block(x), folded(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_inference_blocks_replace_every_convnext_block_and_leave_the_model(generator):
    model = randomize(ConvNeXt(depths=(1, 2), dims=(16, 32), num_classes=5), generator)
    swapped = inference_blocks(model)
    assert not any(isinstance(m, ConvNeXtBlock) for m in swapped.modules())
    assert sum(isinstance(m, FoldedConvNeXtBlock) for m in swapped.modules()) == 3
    assert sum(isinstance(m, ConvNeXtBlock) for m in model.modules()) == 3, "input model changed"
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = model(x)
        assert (swapped(x) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
    for channels_last in (True, False):
        fast = optimize_for_inference(model, channels_last=channels_last)
        assert any(isinstance(m, FoldedConvNeXtBlock) for m in fast.modules())
        assert (fast(x) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
