import pytest
import torch
import torchvision

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.layers.residual import BasicBlock, Bottleneck
from cnnkit.models import resnet

VARIANTS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
]
GOLDEN_PARAMS = {"resnet50": 25_557_032}


def _state_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_layout_and_params_equal_torchvision(name):
    # The meta device builds the layout without allocating or initialising weights.
    with torch.device("meta"):
        ours = getattr(resnet, name)()
        theirs = getattr(torchvision.models, name)()
    assert _state_shapes(ours) == _state_shapes(theirs)
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in theirs.parameters())
    assert n_params == cnnkit.model_card(name).params
    if name in GOLDEN_PARAMS:
        assert n_params == GOLDEN_PARAMS[name]


def _assert_same_outputs(ours, theirs, size: int, generator: torch.Generator) -> None:
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, size, size, generator=generator)
    with torch.no_grad():
        diff = (ours.eval()(x) - theirs.eval()(x)).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {}),
        ("resnet50", {}),
        ("resnet50", {"replace_stride_with_dilation": (False, True, True)}),
        ("resnext50_32x4d", {"replace_stride_with_dilation": (False, False, True)}),
    ],
)
def test_outputs_equal_torchvision(name, kwargs, generator):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(num_classes=10, **kwargs)
    ours = getattr(resnet, name)(num_classes=10, **kwargs)
    _assert_same_outputs(ours, theirs, 32, generator)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet34", "resnet101", "resnet152", "wide_resnet50_2"])
def test_outputs_equal_torchvision_large(name, generator):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)()
    _assert_same_outputs(getattr(resnet, name)(), theirs, 96, generator)


@pytest.mark.parametrize(
    ("dilation", "reductions", "map_size"),
    [
        ((False, False, False), [2, 4, 8, 16, 32], [32, 16, 8, 4, 2]),
        ((False, False, True), [2, 4, 8, 16, 16], [32, 16, 8, 4, 4]),
        ((False, True, True), [2, 4, 8, 8, 8], [32, 16, 8, 8, 8]),
    ],
)
def test_feature_info_and_intermediates_follow_dilation(dilation, reductions, map_size):
    model = resnet.resnet18(replace_stride_with_dilation=dilation).eval()
    assert model.feature_info.reduction() == reductions
    assert model.feature_info.channels() == [64, 64, 128, 256, 512]
    assert model.feature_info.module_names() == ["relu", "layer1", "layer2", "layer3", "layer4"]
    x = torch.randn(1, 3, 64, 64)
    maps = model.forward_intermediates(x)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (c, s, s) for c, s in zip(model.feature_info.channels(), map_size)
    ]
    torch.testing.assert_close(model.forward_features(x), maps[-1])


def test_no_dilation_by_default_or_with_none():
    for model in (resnet.resnet18(), resnet.resnet18(replace_stride_with_dilation=None)):
        assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
        assert all(m.dilation == (1, 1) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_dilated_stages_use_previous_dilation_in_first_block():
    model = resnet.resnet50(replace_stride_with_dilation=(False, True, True))
    assert model.layer3[0].conv2.dilation == (1, 1) and model.layer3[0].conv2.stride == (1, 1)
    assert model.layer3[1].conv2.dilation == (2, 2)
    assert model.layer4[0].conv2.dilation == (2, 2)
    assert model.layer4[2].conv2.dilation == (4, 4)


def test_bottleneck_feature_channels():
    model = resnet.resnext50_32x4d(num_classes=0).eval()
    assert model.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert model.num_features == 2048
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2048)


def test_features_only_out_indices_give_c3_c4_c5():
    backbone = cnnkit.create_model("resnet50", features_only=True, out_indices=(2, 3, 4)).eval()
    maps = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
    assert backbone.feature_info.reduction() == [8, 16, 32]
    assert not any(isinstance(m, torch.nn.Linear) for m in backbone.modules())


def test_head_pre_logits_reset_classifier_and_in_chans():
    model = resnet.resnet18(num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, 512)
    torch.testing.assert_close(model(x), model.fc(pooled))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3


def test_zero_init_residual_zeroes_last_norm_of_every_block():
    for builder, block in ((resnet.resnet18, BasicBlock), (resnet.resnet50, Bottleneck)):
        model = builder(zero_init_residual=True)
        blocks = [m for m in model.modules() if isinstance(m, block)]
        assert blocks and all(torch.count_nonzero(b.last_norm().weight) == 0 for b in blocks)
        assert torch.count_nonzero(model.bn1.weight) == 64


def test_backward_reaches_every_parameter():
    model = resnet.resnet18(num_classes=4)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_fx_traceable():
    model = resnet.resnet18(num_classes=4).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(traced(x), model(x))


def test_bad_configuration_raises():
    with pytest.raises(ConfigError, match="BasicBlock"):
        resnet.ResNet(BasicBlock, (2, 2, 2, 2), groups=32)
    with pytest.raises(ConfigError, match="3 flags"):
        resnet.resnet50(replace_stride_with_dilation=(True, True))
    with pytest.raises(ConfigError, match="4 stages"):
        resnet.ResNet(Bottleneck, (3, 4, 6))
    with pytest.raises(ConfigError, match="replace_stride_with_dilation"):
        cnnkit.create_model("resnet18", replace_stride_with_dilaton=(False, True, True))
