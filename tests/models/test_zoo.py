"""Every registered model, one contract: cards, torchvision compatibility, feature contract, golden outputs.

Golden outputs live in ``tests/models/golden/<name>.json``; regenerate them only on purpose with
``CNNKIT_REGEN_GOLDEN=1 pytest tests/models/test_zoo.py -k golden`` (add ``-m slow`` for the large models).
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import pytest
import torch
import torchvision

import cnnkit
from cnnkit.models.registry import model_card

ALL = cnnkit.list_models(task="classification")
GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"


def _heavy(name: str) -> bool:
    card = model_card(name)
    return card.params > 30_000_000 or card.macs > 3_000_000_000


def _params(names, heavy_slow: bool = True):
    """Parametrize over names; heavy models are marked slow."""
    return [
        pytest.param(n, marks=pytest.mark.slow) if heavy_slow and _heavy(n) else pytest.param(n)
        for n in names
    ]


def _test_size(name: str) -> tuple[int, int, int]:
    """A small input every model accepts: the card's minimum, at least 64 px for 3-channel models."""
    c, h, w = model_card(name).min_input_size
    return (c, max(h, 64 if c == 3 else h), max(w, 64 if c == 3 else w))


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every float parameter and buffer with seeded random values of a sane scale.

    Freshly initialised networks can give near-zero logits (1e-12 for GoogLeNet, 1e-14 for EfficientNet with
    fresh BatchNorm statistics), which would make output comparisons pass whatever the model computes.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim >= 2 and t[0].numel() > 1:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
            else:
                base = 1.0 if name.endswith("weight") and t.ndim == 1 else 0.0
                t.copy_(base + 0.1 * torch.randn(t.shape, generator=g))
    return model


def test_registry_lists_lenet_first_and_every_family():
    assert ALL[0] == "lenet5"
    families = {model_card(n).family for n in ALL}
    expected = {"lenet", "alexnet", "vgg", "googlenet", "inception", "resnet", "densenet", "mobilenet"}
    expected |= {"efficientnet", "convnext"}
    assert expected <= families, f"missing families: {expected - families}"


def test_unknown_model_lists_close_names():
    with pytest.raises(cnnkit.ConfigError, match="resnet50"):
        cnnkit.create_model("resnet05")


def test_unknown_kwarg_names_itself():
    with pytest.raises(cnnkit.ConfigError, match="dropp_rate"):
        cnnkit.create_model("lenet5", dropp_rate=0.1)


def test_duplicate_registration_raises():
    from cnnkit.models.registry import register_model

    def lenet5():  # same name as the registered model
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already registered"):
        register_model(params=1, macs=1)(lenet5)


@pytest.mark.parametrize("name", _params(ALL))
def test_card_matches_analyze(name):
    card = model_card(name)
    model = cnnkit.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == card.params
    report = cnnkit.analyze(model, (1, *card.input_size))
    assert report.params == card.params
    assert report.macs == card.macs, f"{name}: card says {card.macs:,} MACs, analyze measures {report.macs:,}"


TV = [n for n in ALL if model_card(n).torchvision]


@pytest.mark.parametrize("name", _params(TV))
def test_torchvision_state_dict_and_outputs_match(name):
    card = model_card(name)
    torch.manual_seed(0)
    theirs = torchvision.models.get_model(card.torchvision, weights=None).eval()
    ours = cnnkit.create_model(name).eval()
    their_state = theirs.state_dict()
    our_state = ours.state_dict()
    assert list(our_state) == list(their_state)
    assert all(our_state[k].shape == v.shape for k, v in their_state.items())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    randomize_(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, *_test_size(name), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _logits(theirs(x))
        diff = (_logits(ours(x)) - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert scale > 1e-3, f"{name}: outputs too small ({scale}) for the comparison to mean anything"
    assert diff <= 1e-5 * max(1.0, scale)


@pytest.mark.parametrize("name", _params(ALL))
def test_forward_backward_every_parameter_gets_gradient(name):
    torch.manual_seed(0)
    model = cnnkit.create_model(name, num_classes=7).train()
    card = model_card(name)
    # Inception v3's auxiliary head (train mode) needs its full 299 px input; every other model its minimum.
    x = torch.randn(2, *(card.input_size if name == "inception_v3" else card.min_input_size))
    out = model(x)
    outs = out if isinstance(out, tuple) else (out,)
    assert outs[0].shape == (2, 7)
    sum(o.float().pow(2).mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", _params(ALL))
def test_default_input_size_forward(name):
    card = model_card(name)
    model = cnnkit.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *card.input_size))
    assert out.shape == (1, card.num_classes)
    assert model.default_cfg["input_size"] == card.input_size


@pytest.mark.parametrize("name", _params(ALL))
def test_fx_traceable(name):
    model = cnnkit.create_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, *_test_size(name))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", _params(ALL))
def test_features_only_matches_feature_info(name):
    model = cnnkit.create_model(name)
    n = len(model.feature_info)
    assert n >= 2
    indices = tuple(range(n))[-3:]
    features = cnnkit.create_model(name, features_only=True, out_indices=indices).eval()
    c, h, w = _test_size(name)
    with torch.no_grad():
        maps = features(torch.randn(1, c, h, w))
    assert len(maps) == len(indices) == len(features.feature_info)
    for fmap, info in zip(maps, features.feature_info):
        assert fmap.shape[1] == info["num_chs"]
        # "Same"-padded nets round odd sizes by one pixel; unpadded convs (LeNet, Inception v3) lose a border.
        assert 1 <= fmap.shape[2] <= math.ceil(h / info["reduction"]) + 1, (fmap.shape, info)
    assert [m.shape[2] for m in maps] == sorted((m.shape[2] for m in maps), reverse=True)
    used = {n for n, _ in features.named_parameters()}
    assert used, "features_only model has no parameters"


@pytest.mark.parametrize("name", _params(ALL))
def test_forward_features_head_and_reset_classifier(name):
    model = cnnkit.create_model(name).eval()
    x = torch.randn(1, *_test_size(name))
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[1] == model.num_features
        torch.testing.assert_close(model.forward_head(feats), model(x))
        # Heads with hidden layers (LeNet, AlexNet, VGG) end their pre-logits at the classifier's input.
        width = getattr(model, "head_hidden_size", model.num_features)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (1, width)
        model.reset_classifier(5)
        assert model(x).shape == (1, 5)
        model.reset_classifier(0)
        assert model(x).shape == (1, width)


def _golden_stats(out: torch.Tensor) -> dict:
    flat = out.flatten().double()
    return {
        "shape": list(out.shape),
        "mean": flat.mean().item(),
        "std": flat.std().item(),
        "head": flat[:8].tolist(),
    }


@pytest.mark.parametrize("name", _params(ALL))
def test_golden_output(name):
    """Seeded weights + fixed input -> stored output statistics (catches silent architecture changes)."""
    model = randomize_(cnnkit.create_model(name)).eval()
    x = torch.randn(1, *_test_size(name), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stats = _golden_stats(model(x))
    path = GOLDEN_DIR / f"{name}.json"
    if os.environ.get("CNNKIT_REGEN_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(stats, indent=1) + "\n")
    assert path.exists(), f"no golden file for {name}; regenerate on purpose with CNNKIT_REGEN_GOLDEN=1"
    expected = json.loads(path.read_text())
    assert stats["shape"] == expected["shape"]
    for key in ("mean", "std"):
        assert math.isclose(stats[key], expected[key], rel_tol=1e-3, abs_tol=1e-6), (
            key,
            stats[key],
            expected[key],
        )
    torch.testing.assert_close(
        torch.tensor(stats["head"]), torch.tensor(expected["head"]), rtol=1e-3, atol=1e-6, check_dtype=False
    )
