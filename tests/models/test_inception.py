import pytest
import torch
import torchvision
from torchvision.models.inception import InceptionAux as TvInceptionAux

import cnnkit
from cnnkit.models.inception import InceptionV3, InceptionV3Aux, InceptionV3Outputs


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    # He-scaled weights and non-trivial BN statistics, so an output comparison exercises every parameter.
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
    theirs = torchvision.models.inception_v3(weights=None, init_weights=False, dropout=0.0)
    _randomize(theirs, generator)
    ours = InceptionV3(dropout=0.0)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("transform_input", [False, True])
def test_eval_output_equals_torchvision_at_min_size(pair, transform_input, generator):
    ours, theirs = pair
    ours.transform_input = theirs.transform_input = transform_input
    x = torch.randn(2, 3, 75, 75, generator=generator)
    with torch.no_grad():
        expected = theirs.eval()(x)
        out = ours.eval()(x)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # the output depends on the input (atol 1e-5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_params_with_and_without_aux_head(pair):
    assert sum(p.numel() for p in pair[0].parameters()) == 27_161_264
    model = InceptionV3(aux_logits=False)
    assert model.AuxLogits is None
    assert sum(p.numel() for p in model.parameters()) == 23_834_568
    with torch.no_grad():
        out = model.train()(torch.randn(2, 3, 75, 75))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


def test_aux_head_matches_torchvision_on_the_17x17_grid(generator):
    ours, theirs = InceptionV3Aux(768, 10), TvInceptionAux(768, 10)
    _randomize(theirs, generator)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 768, 17, 17, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_train_mode_returns_logits_and_aux_logits_like_torchvision(pair, generator):
    ours, theirs = pair
    ours.transform_input = theirs.transform_input = False
    x = torch.randn(2, 3, 299, 299, generator=generator)
    with torch.no_grad():
        out = ours.train()(x)
        expected = theirs.train()(x)
    assert isinstance(out, InceptionV3Outputs)
    assert out._fields == ("logits", "aux_logits") == expected._fields
    for mine, theirs_out in zip(out, expected):
        assert mine.shape == (2, 1000)
        torch.testing.assert_close(mine, theirs_out, rtol=1e-4, atol=1e-4)


def test_feature_info_matches_intermediates_and_min_input(pair):
    model = pair[0].eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 75, 75))
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, 74, 74))
    assert [m.shape[1] for m in maps] == model.feature_info.channels() == [64, 192, 288, 768, 2048]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    # Unpadded convs and pools: 75 -> 35, 15, 7, 3, 1 (147, 71, 35, 17, 8 at 299).
    assert [m.shape[-1] for m in maps] == [35, 15, 7, 3, 1]


def test_in_chans_reset_classifier_and_transform_input_check():
    model = cnnkit.create_model("inception_v3", in_chans=1, num_classes=4, aux_logits=False)
    assert model.Conv2d_1a_3x3.conv.weight.shape == (32, 1, 3, 3)
    model.reset_classifier(7)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 75, 75)).shape == (1, 7)
    with pytest.raises(cnnkit.ConfigError, match="in_chans=3"):
        InceptionV3(in_chans=4, transform_input=True)


def test_reset_classifier_resizes_the_aux_head():
    model = InceptionV3(num_classes=10)
    model.reset_classifier(0)
    assert isinstance(model.AuxLogits.fc, torch.nn.Identity)
    model.reset_classifier(3)
    assert model.fc.out_features == model.AuxLogits.fc.out_features == 3
    assert "AuxLogits" in model.head_modules()
