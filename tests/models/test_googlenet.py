import pytest
import torch
import torchvision

import cnnkit
from cnnkit.models.googlenet import GoogLeNet, GoogLeNetOutputs, imagenet_to_inception_input
from cnnkit.models.registry import IMAGENET_MEAN, IMAGENET_STD


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    # torchvision's init (std 0.01) gives logits near 1e-12; He-scaled weights and non-trivial BN
    # statistics make an output comparison meaningful.
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


@pytest.fixture(scope="module")
def pair():
    """Our model and torchvision's with the same random weights; no dropout, so train mode is deterministic."""
    generator = torch.Generator().manual_seed(0)
    theirs = torchvision.models.googlenet(weights=None, init_weights=False, dropout=0.0, dropout_aux=0.0)
    _randomize(theirs, generator)
    ours = GoogLeNet(dropout=0.0, dropout_aux=0.0)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("transform_input", [False, True])
def test_eval_output_equals_torchvision(pair, transform_input, generator):
    ours, theirs = pair
    ours.transform_input = theirs.transform_input = transform_input
    x = torch.randn(2, 3, 48, 48, generator=generator)
    with torch.no_grad():
        expected = theirs.eval()(x)
        out = ours.eval()(x)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # the output depends on the input (atol 1e-5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_train_mode_returns_logits_and_both_aux_logits_like_torchvision(pair, generator):
    ours, theirs = pair
    ours.transform_input = theirs.transform_input = False
    x = torch.randn(2, 3, 40, 40, generator=generator)
    with torch.no_grad():
        out = ours.train()(x)
        expected = theirs.train()(x)
    assert isinstance(out, GoogLeNetOutputs)
    assert out._fields == ("logits", "aux_logits2", "aux_logits1") == expected._fields
    for mine, theirs_out in zip(out, expected):
        assert mine.shape == (2, 1000)
        torch.testing.assert_close(mine, theirs_out, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in ours.parameters()) == 13_004_888


def test_without_aux_heads_params_match_published_count_and_train_returns_tensor():
    model = GoogLeNet(aux_logits=False, num_classes=1000)
    assert model.aux1 is None and model.aux2 is None
    assert sum(p.numel() for p in model.parameters()) == 6_624_904
    with torch.no_grad():
        out = model.train()(torch.randn(2, 3, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


def test_transform_input_maps_imagenet_normalisation_to_minus_one_one(generator):
    pixels = torch.rand(2, 3, 4, 4, generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(imagenet_to_inception_input((pixels - mean) / std), (pixels - 0.5) / 0.5)


def test_in_chans_changes_first_conv_and_transform_input_needs_rgb():
    model = cnnkit.create_model("googlenet", in_chans=1, num_classes=5).eval()
    assert model.conv1.conv.weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 16)).shape == (1, 5)
    with pytest.raises(cnnkit.ConfigError, match="in_chans=3"):
        GoogLeNet(in_chans=1, transform_input=True)


def test_feature_info_matches_intermediates_and_min_input_runs():
    model = GoogLeNet(aux_logits=False).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 64, 64))
        assert model(torch.randn(1, 3, 15, 15)).shape == (1, 1000)
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, 14, 14))
    assert [m.shape[1] for m in maps] == model.feature_info.channels() == [64, 192, 480, 832, 1024]
    assert [64 // m.shape[-1] for m in maps] == model.feature_info.reduction() == [2, 4, 8, 16, 32]


def test_reset_classifier_resizes_aux_heads_too():
    model = GoogLeNet(num_classes=10)
    model.reset_classifier(0)
    assert isinstance(model.aux1.fc2, torch.nn.Identity)
    model.reset_classifier(3)
    assert model.fc.out_features == model.aux1.fc2.out_features == model.aux2.fc2.out_features == 3
    with torch.no_grad():
        logits, aux2, aux1 = model.train()(torch.randn(2, 3, 16, 16))
    assert logits.shape == aux1.shape == aux2.shape == (2, 3)


def test_features_only_drops_aux_heads_and_uses_every_parameter():
    features = cnnkit.create_model("googlenet", features_only=True, out_indices=(1, 4)).train()
    names = [n for n, _ in features.named_parameters()]
    assert not any(".aux" in n or n.startswith("model.fc.") for n in names)
    maps = features(torch.randn(2, 3, 15, 15))
    assert [m.shape[1] for m in maps] == [192, 1024]
    sum(m.mean() for m in maps).backward()
    assert all(p.grad is not None for p in features.parameters())
