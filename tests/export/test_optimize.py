"""optimize_for_inference(): same outputs, inference mode, layout, flat graph, compile fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.export import InferenceModel, flatten_graph, fuse, measure_channels_last, optimize_for_inference

from .test_fuse import randomize_batchnorms


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return randomize_batchnorms(
        cnnkit.create_model("resnet18", num_classes=10), torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("channels_last", [True, False])
def test_optimized_model_matches_and_runs_in_inference_mode(resnet18, channels_last, generator):
    fast = optimize_for_inference(resnet18, channels_last=channels_last)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = resnet18(x)
    got = fast(x)  # no context manager: the wrapper enters inference mode itself
    assert got.is_inference() and not x.is_inference()
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
    conv_weight = next(m.weight for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv_weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert isinstance(fast, InferenceModel) and fast.channels_last is channels_last
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet18.modules()), "input model changed"


def test_flatten_graph_calls_only_leaf_compute_modules(resnet18):
    fused = fuse(resnet18)
    flat = flatten_graph(fused)
    called = [flat.get_submodule(n.target) for n in flat.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, (nn.Identity, nn.Sequential)) for m in called)
    convs = sum(isinstance(m, nn.Conv2d) for m in resnet18.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in called) == convs == 20


def test_flatten_graph_keeps_an_untraceable_model():
    from .test_fuse import Untraceable

    model = Untraceable().eval()
    assert flatten_graph(model) is model


def test_compile_failure_falls_back_with_a_warning(monkeypatch, generator):
    def broken(module, *args, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with pytest.warns(
        RuntimeWarning, match="torch.compile failed, running uncompiled: no C\\+\\+ compiler found$"
    ):
        fast = optimize_for_inference(model, compile=True, example_input=torch.zeros(1, 3, 8, 8))
    x = torch.randn(1, 3, 8, 8, generator=generator)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-6)


def test_compile_needs_an_example_without_default_cfg():
    with pytest.raises(ValueError, match="example_input"):
        optimize_for_inference(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), compile=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to eager must fail this test
def test_compiled_model_matches(generator):
    model = randomize_batchnorms(cnnkit.create_model("lenet5"), generator)
    x = torch.randn(2, 1, 32, 32, generator=generator)
    fast = optimize_for_inference(model, compile=True, example_input=x)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5)


@pytest.mark.parametrize("faster_in_channels_last", [True, False])
def test_auto_layout_follows_the_measurement(resnet18, faster_in_channels_last, monkeypatch):
    import cnnkit.export.optimize as optimize

    seen = []

    def measured(module, example, rounds=3):
        seen.append(tuple(example.shape))
        return faster_in_channels_last

    monkeypatch.setattr(optimize, "measure_channels_last", measured)
    fast = optimize_for_inference(resnet18, example_input=torch.zeros(4, 3, 32, 32))
    assert fast.channels_last is faster_in_channels_last and seen == [(4, 3, 32, 32)]
    optimize_for_inference(resnet18)  # example from the card's input size
    assert seen[-1] == (1, 3, 224, 224)


def test_auto_layout_without_an_example_is_channels_last():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    assert optimize_for_inference(model).channels_last


def test_measure_channels_last_leaves_the_module_contiguous(generator):
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    assert measure_channels_last(module, torch.randn(1, 3, 16, 16, generator=generator), rounds=1) in (
        True,
        False,
    )
    assert module[0].weight.is_contiguous()
