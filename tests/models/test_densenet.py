import pytest
import torch
import torchvision

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.models import densenet

VARIANTS = ["densenet121", "densenet161", "densenet169", "densenet201"]


def _state_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _randomize_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_layout_and_params_equal_torchvision(name):
    with torch.device("meta"):
        ours = getattr(densenet, name)()
        theirs = getattr(torchvision.models, name)()
    assert _state_shapes(ours) == _state_shapes(theirs)
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in theirs.parameters()) == cnnkit.model_card(name).params
    if name == "densenet121":
        assert n_params == 7_978_856


def _assert_same_outputs(name: str, size: int, generator: torch.Generator, **kwargs) -> None:
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(**kwargs)
    _randomize_norms(theirs, generator)
    ours = getattr(densenet, name)(**kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, size, size, generator=generator)
    with torch.no_grad():
        assert (ours.eval()(x) - theirs.eval()(x)).abs().max().item() < 1e-5


def test_outputs_equal_torchvision(generator):
    _assert_same_outputs("densenet121", 32, generator, num_classes=10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet161", "densenet169", "densenet201"])
def test_outputs_equal_torchvision_large(name, generator):
    _assert_same_outputs(name, 64, generator)


@pytest.fixture(scope="module")
def small() -> densenet.DenseNet:
    # A DenseNet-BC small enough for fast tests: growth 8, blocks of 2 layers.
    return densenet.DenseNet(
        growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, num_classes=5
    ).eval()


def test_feature_info_and_intermediates(small):
    # Channels: 16 + 2*8 = 32 -> 16; 16 + 16 = 32 -> 16; 32 -> 16; 16 + 16 = 32.
    assert small.feature_info.channels() == [16, 32, 32, 32, 32]
    assert small.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert small.feature_info.module_names() == [
        "features.relu0",
        "features.denseblock1",
        "features.denseblock2",
        "features.denseblock3",
        "features.norm5",
    ]
    x = torch.randn(1, 3, 64, 64)
    maps = small.forward_intermediates(x)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (16, 32, 32),
        (32, 16, 16),
        (32, 8, 8),
        (32, 4, 4),
        (32, 2, 2),
    ]
    torch.testing.assert_close(small.forward_features(x), maps[-1])
    assert maps[-1].min().item() >= 0.0


def test_densenet121_stage_channels():
    with torch.device("meta"):
        model = densenet.densenet121()
    assert model.feature_info.channels() == [64, 256, 512, 1024, 1024]
    assert model.num_features == 1024


def test_head_pre_logits_reset_classifier_fx_and_features_only(small):
    x = torch.randn(2, 3, 32, 32)
    pooled = small.forward_head(small.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, 32)
    torch.testing.assert_close(small(x), small.classifier(pooled))
    torch.testing.assert_close(torch.fx.symbolic_trace(small)(x), small(x))
    with torch.device("meta"):
        backbone = cnnkit.create_model("densenet121", features_only=True, out_indices=(2, 3, 4)).eval()
        maps = backbone(torch.empty(2, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(512, 4, 4), (1024, 2, 2), (1024, 1, 1)]
    small.reset_classifier(3)
    assert small(x).shape == (2, 3)


def test_backward_and_in_chans():
    model = densenet.DenseNet(
        growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8, num_classes=3, in_chans=1
    )
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    assert model.features.conv0.in_channels == 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_block_config_raises():
    with pytest.raises(ConfigError, match="4 dense blocks"):
        densenet.DenseNet(block_config=(6, 12, 24))
