"""LeNet-5: the page's spec in the zoo, its card, variants and feature contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.analysis import analyze
from cnnkit.errors import ConfigError
from cnnkit.models.lenet import PAGE_SPEC, lenet5, lenet5_classic


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_is_the_page_spec_and_registered_first():
    assert cnnkit.list_models()[:2] == ["lenet5", "lenet5_classic"]
    assert PAGE_SPEC in (cnnkit.models.spec.__doc__ or "")
    ours, page = lenet5(), cnnkit.build(PAGE_SPEC)
    assert [(n, type(m)) for n, m in ours.named_children()] == [
        (n, type(m)) for n, m in page.named_children()
    ]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in page.state_dict().items()
    }


@pytest.mark.parametrize("name", ["lenet5", "lenet5_classic"])
def test_card_numbers_are_the_hand_counts_and_analyze_agrees(name):
    card = cnnkit.model_card(name)
    # 6*(25+1) + 16*(150+1) + 400*120+120 + 120*84+84 + 84*10+10
    assert card.params == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706
    # 6*28*28*25 + 16*10*10*150 + 400*120 + 120*84 + 84*10
    assert card.macs == 117_600 + 240_000 + 48_000 + 10_080 + 840 == 416_520
    model = cnnkit.create_model(name)
    report = analyze(model, (1, *card.input_size))
    assert (report.params, report.macs) == (card.params, card.macs) == (n_params(model), card.macs)
    assert card.input_size == card.min_input_size == (1, 32, 32)
    assert (card.mean, card.std, card.num_classes) == ((0.1307,), (0.3081,), 10)
    assert card.first_conv == "conv1" and card.classifier == "fc3" and card.torchvision is None
    assert model.get_submodule(card.first_conv).in_channels == 1
    assert model.get_submodule(card.classifier).out_features == 10


def test_classic_uses_tanh_and_average_pooling():
    kinds = {type(m) for m in lenet5_classic().modules()}
    assert nn.Tanh in kinds and nn.AvgPool2d in kinds and nn.ReLU not in kinds and nn.MaxPool2d not in kinds
    relu_avg = {type(m) for m in lenet5(pool="avg").modules()}
    assert nn.ReLU in relu_avg and nn.AvgPool2d in relu_avg
    with pytest.raises(ConfigError, match="act must be 'relu' or 'tanh'"):
        lenet5(act="gelu")
    with pytest.raises(ConfigError, match="pool must be 'max' or 'avg'"):
        lenet5(pool="lp")


def test_classic_forward_equals_a_hand_written_lenet(generator):
    model = lenet5_classic().eval()
    x = torch.randn(3, 1, 32, 32, generator=generator)
    f = torch.nn.functional
    h = f.avg_pool2d(torch.tanh(f.conv2d(x, model.conv1.weight, model.conv1.bias)), 2)
    h = f.avg_pool2d(torch.tanh(f.conv2d(h, model.conv2.weight, model.conv2.bias)), 2).flatten(1)
    h = torch.tanh(f.linear(h, model.fc1.weight, model.fc1.bias))
    h = torch.tanh(f.linear(h, model.fc2.weight, model.fc2.bias))
    torch.testing.assert_close(model(x), f.linear(h, model.fc3.weight, model.fc3.bias))


def test_create_model_num_classes_and_in_chans():
    model = cnnkit.create_model("lenet5", num_classes=3, in_chans=3)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    # conv1 gains 2 * 6 * 25 weights; fc3 loses 7 * (84 + 1)
    assert n_params(model) == 61_706 + 2 * 6 * 25 - 7 * 85
    assert model.default_cfg["architecture"] == "lenet5"


def test_feature_contract(generator):
    model = cnnkit.create_model("lenet5").eval()
    x = torch.randn(2, 1, 32, 32, generator=generator)
    feats = model.forward_features(x)
    assert feats.shape == (2, 16, 5, 5) and model.num_features == 16
    assert model.forward_head(feats, pre_logits=True).shape == (2, 84)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.feature_info.channels() == [16, 16] and model.feature_info.reduction() == [2, 4]
    pyramid = cnnkit.create_model("lenet5", features_only=True)
    maps = pyramid(x)
    assert [m.shape for m in maps] == [(2, 16, 10, 10), (2, 16, 5, 5)]
    assert n_params(pyramid) == 156 + 2_416
    last = cnnkit.create_model("lenet5", features_only=True, out_indices=(-1,))
    last.load_state_dict(pyramid.state_dict())
    torch.testing.assert_close(last(x)[0], maps[1])
    model.reset_classifier(4)
    assert model(x).shape == (2, 4) and model.fc3.in_features == 84
