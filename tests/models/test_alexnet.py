import pytest
import torch
import torchvision

import cnnkit
from cnnkit.models import alexnet


@pytest.fixture(scope="module")
def pair() -> tuple[alexnet.AlexNet, torch.nn.Module]:
    torch.manual_seed(0)
    theirs = torchvision.models.alexnet(num_classes=10).eval()
    # Build ours on the meta device and take torchvision's tensors rather than initialising 61M weights again.
    with torch.device("meta"):
        ours = alexnet.alexnet(num_classes=10)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    return ours.eval(), theirs


def test_state_dict_params_and_outputs_equal_torchvision(pair, generator):
    ours, theirs = pair
    x = torch.randn(2, 3, 96, 96, generator=generator)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-5
    with torch.device("meta"):
        n_params = sum(p.numel() for p in alexnet.alexnet().parameters())
    assert n_params == 61_100_840 == cnnkit.model_card("alexnet").params


def test_feature_info_matches_intermediates_at_224():
    with torch.device("meta"):
        model = alexnet.alexnet()
        maps = model.forward_intermediates(torch.empty(1, 3, 224, 224))
    assert model.feature_info.channels() == [64, 192, 256, 256]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    # Valid (unpadded) pools round down: 224 -> 55 -> 27 -> 13 -> 6.
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 55, 55), (192, 27, 27), (256, 13, 13), (256, 6, 6)]


def test_minimum_input_size_is_63(pair):
    ours, _ = pair
    assert cnnkit.model_card("alexnet").min_input_size == (3, 63, 63)
    assert ours(torch.randn(1, 3, 63, 63)).shape == (1, 10)
    with pytest.raises(RuntimeError):
        ours(torch.randn(1, 3, 62, 62))


def test_head_pre_logits_fx_and_reset_classifier(pair):
    ours, _ = pair
    x = torch.randn(2, 3, 64, 64)
    features = ours.forward_features(x)
    assert features.shape[1] == ours.num_features == 256
    pre = ours.forward_head(features, pre_logits=True)
    assert pre.shape == (2, ours.head_hidden_size) == (2, 4096)
    torch.testing.assert_close(ours(x), ours.classifier[6](pre))
    torch.testing.assert_close(torch.fx.symbolic_trace(ours)(x), ours(x))
    ours.reset_classifier(5)
    assert ours(x).shape == (2, 5) and ours.classifier[6].in_features == 4096
    ours.reset_classifier(0)
    torch.testing.assert_close(ours(x), pre)


def test_in_chans_and_backward():
    model = alexnet.alexnet(num_classes=3, in_chans=1, dropout=0.0)
    model(torch.randn(2, 1, 63, 63)).sum().backward()
    assert model.features[0].in_channels == 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
