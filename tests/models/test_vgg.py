import pytest
import torch
import torchvision

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.models import vgg

VARIANTS = [f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn")]


def _state_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _randomize_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


def _ours_with_weights_of(theirs: torch.nn.Module, name: str, **kwargs) -> vgg.VGG:
    # Every VGG holds a 25088 x 4096 layer: build ours on the meta device and take torchvision's tensors,
    # instead of initialising 100M weights a second time.
    with torch.device("meta"):
        ours = getattr(vgg, name)(**kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    return ours.eval()


@pytest.fixture(scope="module")
def pair() -> tuple[vgg.VGG, torch.nn.Module]:
    torch.manual_seed(0)
    theirs = torchvision.models.vgg11_bn(num_classes=10)
    _randomize_norms(theirs, torch.Generator().manual_seed(1))
    return _ours_with_weights_of(theirs, "vgg11_bn", num_classes=10), theirs.eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_layout_and_params_equal_torchvision(name):
    # The meta device builds the layout without allocating or initialising weights.
    with torch.device("meta"):
        ours = getattr(vgg, name)()
        theirs = getattr(torchvision.models, name)()
    assert _state_shapes(ours) == _state_shapes(theirs)
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in theirs.parameters()) == cnnkit.model_card(name).params


def test_vgg16_has_the_published_parameter_count():
    with torch.device("meta"):
        assert sum(p.numel() for p in vgg.vgg16().parameters()) == 138_357_544


def test_outputs_equal_torchvision(pair, generator):
    ours, theirs = pair
    x = torch.randn(1, 3, 32, 32, generator=generator)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11", "vgg13_bn", "vgg16", "vgg19_bn"])
def test_outputs_equal_torchvision_large(name, generator):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)()
    _randomize_norms(theirs, generator)
    ours = _ours_with_weights_of(theirs, name)
    x = torch.randn(1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        assert (ours(x) - theirs.eval()(x)).abs().max().item() < 1e-5


def test_own_initialisation_follows_the_paper_recipe():
    torch.manual_seed(0)
    model = vgg.vgg11(num_classes=10)
    conv = model.features[0]
    assert torch.count_nonzero(conv.bias) == 0
    # Kaiming normal, fan_out: std = sqrt(2 / (64 * 3 * 3)).
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.15)
    assert model.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.01)


def test_feature_info_and_intermediates():
    with torch.device("meta"):
        model = vgg.vgg11_bn()
        maps = model.eval().forward_intermediates(torch.empty(1, 3, 64, 64))
        last = model.forward_features(torch.empty(1, 3, 64, 64))
    assert model.feature_info.channels() == [128, 256, 512, 512, 512]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    # Each stage map is the ReLU right before its max pool; the last is the final pool.
    for name in model.feature_info.module_names()[:-1]:
        index = int(name.split(".")[1])
        assert isinstance(model.features[index], torch.nn.ReLU)
        assert isinstance(model.features[index + 1], torch.nn.MaxPool2d)
    assert model.feature_info.module_names()[-1] == f"features.{len(model.features) - 1}"
    assert [tuple(m.shape[1:]) for m in maps] == [
        (128, 32, 32),
        (256, 16, 16),
        (512, 8, 8),
        (512, 4, 4),
        (512, 2, 2),
    ]
    assert last.shape == maps[-1].shape


def test_features_only_drops_the_classifier():
    with torch.device("meta"):
        backbone = cnnkit.create_model("vgg16", features_only=True, out_indices=(2, 3, 4)).eval()
        maps = backbone(torch.empty(1, 3, 64, 64))
    assert not any(isinstance(m, torch.nn.Linear) for m in backbone.modules())
    assert [tuple(m.shape[1:]) for m in maps] == [(512, 8, 8), (512, 4, 4), (512, 2, 2)]


def test_fx_traceable(pair):
    ours, _ = pair
    traced = torch.fx.symbolic_trace(ours)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(traced(x), ours(x))


def test_head_pre_logits_and_reset_classifier(pair):
    ours, _ = pair
    x = torch.randn(2, 3, 32, 32)
    features = ours.forward_features(x)
    assert features.shape[1] == ours.num_features == 512
    pre = ours.forward_head(features, pre_logits=True)
    assert pre.shape == (2, ours.head_hidden_size) == (2, 4096)
    torch.testing.assert_close(ours(x), ours.classifier[6](pre))
    ours.reset_classifier(3)
    assert ours(x).shape == (2, 3) and ours.classifier[6].in_features == 4096
    ours.reset_classifier(0)
    torch.testing.assert_close(ours(x), pre)


def test_dropout_option_and_bad_configuration():
    with torch.device("meta"):
        model = vgg.vgg13(dropout=0.2)
    assert [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    with pytest.raises(ConfigError, match="5 stages"):
        vgg.VGG((1, 1, 2))
