import pytest
import torch
import torchvision
from torch import nn

import cnnkit
from cnnkit.models.mobilenet import MobileNetV2, MobileNetV3


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    # With torchvision's init and fresh BN statistics, eval-mode activations shrink layer after layer
    # (logits near 1e-11). He-scaled weights and non-trivial BN statistics keep the output input-dependent.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=generator) * (2 / m.weight[0].numel()) ** 0.5
                )
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def _assert_same_as_torchvision(ours, theirs, generator, size=32):
    _randomize(theirs, generator)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size, generator=generator)
    with torch.no_grad():
        expected = theirs.eval()(x)
        torch.testing.assert_close(ours.eval()(x), expected, rtol=0, atol=1e-5)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # the output depends on the input (atol 1e-5)


@pytest.mark.parametrize("width_mult", [0.5, 0.75, 1.4])
def test_mobilenet_v2_width_mult_matches_torchvision(width_mult, generator):
    ours = cnnkit.create_model("mobilenet_v2", width_mult=width_mult, num_classes=10)
    theirs = torchvision.models.mobilenet_v2(width_mult=width_mult, num_classes=10)
    _assert_same_as_torchvision(ours, theirs, generator)
    # The last conv widens with width_mult > 1 but never narrows.
    assert ours.num_features == (1792 if width_mult > 1 else 1280)


@pytest.mark.parametrize("arch", ["large", "small"])
@pytest.mark.parametrize(
    "options",
    [{}, {"width_mult": 0.75}, {"reduced_tail": True}, {"dilated": True}],
    ids=["default", "width0.75", "reduced_tail", "dilated"],
)
def test_mobilenet_v3_options_match_torchvision(arch, options, generator):
    ours = cnnkit.create_model(f"mobilenet_v3_{arch}", num_classes=10, **options)
    theirs = torchvision.models.get_model(f"mobilenet_v3_{arch}", weights=None, num_classes=10, **options)
    _assert_same_as_torchvision(ours, theirs, generator)


@pytest.mark.parametrize(
    ("name", "channels", "reductions", "modules"),
    [
        ("mobilenet_v2", [16, 24, 32, 96, 1280], [2, 4, 8, 16, 32], [1, 3, 6, 13, 18]),
        ("mobilenet_v3_large", [16, 24, 40, 112, 960], [2, 4, 8, 16, 32], [1, 3, 6, 12, 16]),
        ("mobilenet_v3_small", [16, 16, 24, 48, 576], [2, 4, 8, 16, 32], [0, 1, 3, 8, 12]),
    ],
)
def test_feature_info_matches_intermediates(name, channels, reductions, modules):
    model = cnnkit.create_model(name).eval()
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == reductions
    assert model.feature_info.module_names() == [f"features.{i}" for i in modules]
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == channels
    assert [64 // m.shape[-1] for m in maps] == reductions


def test_dilated_v3_keeps_output_stride_16():
    model = MobileNetV3("large", dilated=True).eval()
    assert model.feature_info.reduction() == [2, 4, 8, 16]
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 64, 64))
    assert maps[-1].shape == (1, 960, 4, 4)


@pytest.mark.parametrize("arch", ["large", "small"])
def test_output_stride_dilates_the_stages_past_it(arch):
    plain = MobileNetV3(arch).eval()
    sixteen, eight = MobileNetV3(arch, output_stride=16).eval(), MobileNetV3(arch, output_stride=8).eval()
    # the same weights (a classifier's checkpoint loads into either), other strides and dilations
    for model in (sixteen, eight):
        assert {k: v.shape for k, v in model.state_dict().items()} == {
            k: v.shape for k, v in plain.state_dict().items()
        }
        model.load_state_dict(plain.state_dict())
    assert str(sixteen) == str(MobileNetV3(arch, dilated=True))
    assert eight.feature_info.reduction() == [2, 4, 8]
    dilations = [m.dilation[0] for m in eight.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert sorted(set(dilations)) == [1, 2, 4]  # the stride-16 stage at 2, the stride-32 one at 4
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert eight.forward_intermediates(x)[-1].shape[-1] == 8
        assert sixteen.forward_intermediates(x)[-1].shape[-1] == 4
        # the stages before the dilated ones are untouched
        assert torch.equal(eight.forward_intermediates(x)[1], plain.forward_intermediates(x)[1])
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        MobileNetV3(arch, output_stride=4)


def test_in_chans_and_min_input_size():
    model = cnnkit.create_model("mobilenet_v3_small", in_chans=1).eval()
    assert model.features[0][0].weight.shape == (16, 1, 3, 3)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 1, 1)).shape == (1, 1000)


def test_v3_reset_classifier_keeps_the_hidden_layer_and_zero_gives_pooled_features():
    model = MobileNetV3("small", num_classes=10).eval()
    hidden = model.classifier[0]
    model.reset_classifier(5)
    assert model.classifier[0] is hidden and model.classifier[3].out_features == 5
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
        assert model(x).shape == (1, model.num_features) == (1, 576)
        model.reset_classifier(3)
        assert model(x).shape == (1, 3)


def test_v2_reset_classifier_and_features_only_use_every_parameter():
    model = MobileNetV2(num_classes=10)
    model.reset_classifier(4)
    assert model.classifier[1].out_features == 4
    features = cnnkit.create_model("mobilenet_v2", features_only=True, out_indices=(2, 4)).train()
    maps = features(torch.randn(2, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [32, 1280]
    sum(m.mean() for m in maps).backward()
    assert all(p.grad is not None for p in features.parameters())
