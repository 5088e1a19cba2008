"""ConvNeXt: torchvision layout and outputs, feature maps, stochastic depth schedule, options."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import cnnkit
from cnnkit.layers import ConvNeXtBlock, LayerNorm2d
from cnnkit.models import convnext
from cnnkit.models.features import FeatureListNet

VARIANTS = ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"]
PUBLISHED_PARAMS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
}


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", VARIANTS)
def test_layout_and_card_match_torchvision(name):
    # The meta device builds the layout without allocating weights, so even the large model is fast.
    with torch.device("meta"):
        ours = getattr(convnext, name)()
        theirs = getattr(torchvision.models, name)()
    assert list(_shapes(ours).items()) == list(_shapes(theirs).items())
    assert _n_params(ours) == _n_params(theirs) == PUBLISHED_PARAMS[name] == cnnkit.model_card(name).params
    card = cnnkit.model_card(name)
    weights = torchvision.models.get_weight(f"ConvNeXt_{name.split('_')[1].title()}_Weights.IMAGENET1K_V1")
    assert math.isclose(card.macs / 1e9, weights.meta["_ops"], rel_tol=5e-3)
    assert card.input_size == (3, 224, 224)
    # Same stochastic depth per block as torchvision's defaults (0.1 tiny, 0.4 small, 0.5 base/large).
    our_probs = [m.stochastic_depth.p for m in ours.modules() if isinstance(m, ConvNeXtBlock)]
    their_probs = [m.stochastic_depth.p for m in theirs.modules() if hasattr(m, "stochastic_depth")]
    assert our_probs == pytest.approx(their_probs, abs=1e-12)


def _assert_outputs_equal_torchvision(name: str, generator: torch.Generator) -> None:
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)().eval()
    with torch.device("meta"):  # skip our own initialisation: every tensor is replaced by theirs
        ours = getattr(convnext, name)().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-5


def test_outputs_equal_torchvision(generator):
    _assert_outputs_equal_torchvision("convnext_tiny", generator)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_small", "convnext_base", "convnext_large"])
def test_outputs_equal_torchvision_larger(name, generator):
    _assert_outputs_equal_torchvision(name, generator)


def _small_convnext(**kwargs) -> convnext.ConvNeXt:
    return convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), **kwargs)


def test_feature_info_matches_intermediate_maps(generator):
    with torch.device("meta"):
        info = convnext.convnext_tiny().feature_info
    assert info.channels() == [96, 192, 384, 768]
    assert info.reduction() == [4, 8, 16, 32]
    assert info.module_names() == ["features.1", "features.3", "features.5", "features.7"]
    model = _small_convnext().eval()
    x = torch.randn(2, 3, 64, 96, generator=generator)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        assert [tuple(m.shape[1:]) for m in maps] == [(8, 16, 24), (16, 8, 12), (32, 4, 6), (64, 2, 3)]
        torch.testing.assert_close(maps[-1], model.forward_features(x))
        torch.testing.assert_close(maps[0], model.features[1](model.features[0](x)))


def test_features_only_drops_the_head_and_uses_every_parameter(generator):
    net = FeatureListNet(_small_convnext(), out_indices=(0, 2))
    assert net.feature_info.channels() == [8, 32]
    maps = net(torch.randn(1, 3, 64, 64, generator=generator))
    assert [tuple(m.shape) for m in maps] == [(1, 8, 16, 16), (1, 32, 4, 4)]
    sum(m.mean() for m in maps).backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    # Stage 4 and the last downsampling are not needed for out_indices (0, 2), but stay in the model.
    assert all(n.startswith(("model.features.6", "model.features.7")) for n in unused)
    assert not any(
        isinstance(m, (nn.Linear, LayerNorm2d)) and "classifier" in n for n, m in net.named_modules()
    )


def test_stages_stem_and_downsampling():
    model = _small_convnext(in_chans=1)
    stem_conv, stem_norm = model.features[0][0], model.features[0][1]
    assert (stem_conv.in_channels, stem_conv.kernel_size, stem_conv.stride, stem_conv.padding) == (
        1,
        (4, 4),
        (4, 4),
        (0, 0),
    )
    assert stem_conv.bias is not None and isinstance(stem_norm, LayerNorm2d)
    for i, (c_in, c_out) in zip((2, 4, 6), ((8, 16), (16, 32), (32, 64))):
        norm, conv = model.features[i]
        assert isinstance(norm, LayerNorm2d) and norm.normalized_shape == (c_in,)
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (
            c_in,
            c_out,
            (2, 2),
            (2, 2),
        )
    assert [len(model.features[i]) for i in (1, 3, 5, 7)] == [1, 1, 2, 1]


def test_drop_path_rate_grows_linearly_to_the_last_block():
    model = _small_convnext(drop_path_rate=0.4)
    probs = [m.stochastic_depth.p for m in model.modules() if isinstance(m, ConvNeXtBlock)]
    assert probs == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    with torch.device("meta"):
        tiny = cnnkit.create_model("convnext_tiny", drop_path_rate=0.2)
    probs = [m.stochastic_depth.p for m in tiny.modules() if isinstance(m, ConvNeXtBlock)]
    assert len(probs) == 18 and probs[0] == 0.0 and probs[-1] == pytest.approx(0.2)


def test_head_pre_logits_reset_classifier_and_layer_scale(generator):
    torch.manual_seed(0)
    model = _small_convnext(num_classes=10, layer_scale=0.1).eval()
    assert all(torch.all(m.layer_scale == 0.1) for m in model.modules() if isinstance(m, ConvNeXtBlock))
    x = torch.randn(3, 3, 32, 32, generator=generator)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        # The head's LayerNorm (unit weight, zero bias at init) standardizes each pooled vector.
        assert pooled.shape == (3, 64)
        torch.testing.assert_close(pooled.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x), model.classifier[2](pooled))
    model.reset_classifier(4)
    head = model.get_classifier()
    assert head.out_features == 4 and torch.all(head.bias == 0)
    assert head.weight.std().item() == pytest.approx(0.02, rel=0.5)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (3, 64)


def test_init_truncated_normal():
    torch.manual_seed(0)
    model = convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(64, 128, 256, 512))
    weight = model.features[6][1].weight
    # torchvision truncates at +-2 (absolute, as nn.init.trunc_normal_'s defaults), 100 std: a plain normal.
    assert weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert weight.mean().abs().item() < 0.002
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_mismatched_depths_and_dims_raise():
    with pytest.raises(ValueError, match="one entry per stage"):
        convnext.ConvNeXt(depths=(1, 1, 1), dims=(8, 16, 32, 64))
