"""EfficientNet: torchvision layout and outputs, compound scaling, feature maps, options."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import cnnkit
from cnnkit import geometry
from cnnkit.layers import make_divisible
from cnnkit.models import efficientnet
from cnnkit.models.efficientnet import B0_STAGES, EfficientNet, compound_scale

VARIANTS = [f"efficientnet_b{i}" for i in range(8)]
CROP_SIZES = dict(zip(VARIANTS, (224, 240, 288, 300, 380, 456, 528, 600)))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "stochastic_depth")]


@pytest.mark.parametrize("name", VARIANTS)
def test_layout_norms_and_card_match_torchvision(name):
    # The meta device builds the layout without allocating weights, so even B7 is fast.
    with torch.device("meta"):
        ours = getattr(efficientnet, name)()
        theirs = getattr(torchvision.models, name)()
    assert list(_shapes(ours).items()) == list(_shapes(theirs).items())
    assert _n_params(ours) == _n_params(theirs) == cnnkit.model_card(name).params
    our_norms = [(m.eps, m.momentum) for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    their_norms = [(m.eps, m.momentum) for m in theirs.modules() if isinstance(m, nn.BatchNorm2d)]
    assert our_norms == their_norms
    # B5-B7 keep the TensorFlow BatchNorm settings of their weights.
    assert our_norms[0] == ((1e-3, 0.01) if name[-1] in "567" else (1e-5, 0.1))
    card = cnnkit.model_card(name)
    assert card.input_size == (3, CROP_SIZES[name], CROP_SIZES[name])
    weights = torchvision.models.get_weight(f"EfficientNet_B{name[-1]}_Weights.IMAGENET1K_V1")
    assert weights.meta["num_params"] == card.params
    assert math.isclose(card.macs / 1e9, weights.meta["_ops"], rel_tol=5e-3)


def _assert_outputs_equal_torchvision(name: str, generator: torch.Generator) -> None:
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)().eval()
    with torch.device("meta"):  # skip our own initialisation: every tensor is replaced by theirs
        ours = getattr(efficientnet, name)().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b2"])
def test_outputs_equal_torchvision(name, generator):
    _assert_outputs_equal_torchvision(name, generator)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b5", "efficientnet_b7"])
def test_outputs_equal_torchvision_large(name, generator):
    _assert_outputs_equal_torchvision(name, generator)


def test_feature_info_matches_intermediate_maps(generator):
    model = efficientnet.efficientnet_b0().eval()
    info = model.feature_info
    assert info.reduction() == [2, 4, 8, 16, 32]
    assert info.channels() == [16, 24, 40, 112, 1280]
    assert info.module_names() == ["features.1", "features.2", "features.3", "features.5", "features.8"]
    x = torch.randn(1, 3, 64, 96, generator=generator)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        assert [tuple(m.shape[1:]) for m in maps] == [
            (c, 64 // r, 96 // r) for c, r in zip(info.channels(), info.reduction())
        ]
        # The last map is what forward_features returns, and each map is that module's output.
        torch.testing.assert_close(maps[-1], model.forward_features(x))
        torch.testing.assert_close(maps[0], model.features[1](model.features[0](x)))


def test_features_only_drops_the_classifier_and_uses_every_parameter(generator):
    net = cnnkit.create_model("efficientnet_b0", features_only=True, out_indices=(1, 3, 4))
    assert net.feature_info.channels() == [24, 112, 1280]
    maps = net(torch.randn(2, 3, 64, 64, generator=generator))
    assert [tuple(m.shape) for m in maps] == [(2, 24, 16, 16), (2, 112, 4, 4), (2, 1280, 2, 2)]
    sum(m.mean() for m in maps).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert not any(isinstance(m, nn.Linear) for m in net.modules())


def test_compound_scale_builds_on_geometry():
    for phi in (0, 1, 2.5):
        scale = compound_scale(phi)
        expected = geometry.compound_scaling(phi, 1.2, 1.1, 1.15)
        assert scale[:4] == tuple(expected)
        assert scale.image_size == round(224 * 1.15**phi)
    assert compound_scale(1)[:3] == pytest.approx((1.2, 1.1, 1.15))
    custom = compound_scale(2, alpha=1.1, beta=1.2, gamma=1.3)
    assert custom[:3] == pytest.approx((1.21, 1.44, 1.69))
    assert custom.image_size == 379


def test_phi_zero_is_b0():
    with torch.device("meta"):
        scaled = efficientnet.efficientnet(phi=0)
        b0 = efficientnet.efficientnet_b0()
    assert _shapes(scaled) == _shapes(b0)
    assert _n_params(scaled) == 5_288_548
    assert scaled.default_cfg["input_size"] == (3, 224, 224)


def test_scaled_network_rounds_depth_up_and_width_to_multiples_of_8():
    phi = 2
    scale = compound_scale(phi)
    with torch.device("meta"):
        model = efficientnet.efficientnet(phi=phi, num_classes=10, in_chans=1)
    assert model.default_cfg["input_size"] == (1, scale.image_size, scale.image_size) == (1, 296, 296)
    assert model.features[0][0].in_channels == 1
    stages = model.features[1:8]
    assert [len(s) for s in stages] == [math.ceil(cfg.num_layers * scale.depth) for cfg in B0_STAGES]
    widths = [s[-1].out_channels for s in stages]
    assert all(w % 8 == 0 for w in widths)
    targets = [cfg.out_channels * scale.width for cfg in B0_STAGES]
    assert widths == [make_divisible(t, 8) for t in targets] == [24, 32, 48, 96, 136, 232, 384]
    # Nearest multiple of 8, but never more than 10% below the target.
    assert all(0.9 * t <= w <= t + 4 or w - 8 < 0.9 * t for w, t in zip(widths, targets))
    assert model.num_features == 4 * widths[-1]


def test_parameter_count_grows_with_phi():
    with torch.device("meta"):
        counts = [_n_params(efficientnet.efficientnet(phi=phi)) for phi in (-1, 0, 1, 2, 3, 4)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_stochastic_depth_grows_linearly_like_torchvision():
    with torch.device("meta"):
        ours = efficientnet.efficientnet_b0(drop_path_rate=0.3)
        theirs = torchvision.models.efficientnet_b0(stochastic_depth_prob=0.3)
    probs = [b.stochastic_depth.p for b in _blocks(ours)]
    assert len(probs) == 16
    assert probs == pytest.approx([0.3 * i / 16 for i in range(16)])
    assert probs == [b.stochastic_depth.p for b in _blocks(theirs)]


def test_options_dropout_in_chans_and_reset_classifier(generator):
    model = cnnkit.create_model("efficientnet_b0", num_classes=10, in_chans=1, drop_rate=0.5).eval()
    assert model.classifier[0].p == 0.5
    assert model.features[0][0].weight.shape == (32, 1, 3, 3)
    x = torch.randn(2, 1, 32, 32, generator=generator)
    assert model(x).shape == (2, 10)
    assert cnnkit.create_model("efficientnet_b7", drop_rate=0.1).classifier[0].p == 0.1
    model.reset_classifier(3)
    head = model.get_classifier()
    assert head.out_features == 3
    assert head.weight.abs().max() <= 1 / math.sqrt(3) and torch.all(head.bias == 0)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, 1280)
    with pytest.raises(cnnkit.ConfigError, match="drop_rat"):
        cnnkit.create_model("efficientnet_b0", drop_rat=0.1)


def test_init_follows_torchvision_scheme():
    torch.manual_seed(0)
    model = EfficientNet()
    stem = model.features[0][0].weight
    # He normal, fan-out: std = sqrt(2 / (out_channels * k * k)).
    assert stem.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.15)
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.classifier[1].weight.abs().max() <= 1 / math.sqrt(1000)
