"""``check_export``: a relative error catches a wrong file at any output scale; zero outputs refuse."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import cnnkit
from cnnkit.cli import main
from cnnkit.errors import ConfigError
from cnnkit.export import RELATIVE_TOLERANCE, check_export, export_onnx, fuse, run_exported


@pytest.fixture(scope="module")
def mobilenet_export(tmp_path_factory):
    """A randomly initialised mobilenet_v3_small, its fused ONNX file and two check samples."""
    torch.manual_seed(0)
    model = cnnkit.create_model("mobilenet_v3_small").eval()
    generator = torch.Generator().manual_seed(0)
    samples = [torch.randn(n, 3, 96, 96, generator=generator) for n in (1, 3)]
    path = export_onnx(
        fuse(model), tmp_path_factory.mktemp("onnx") / "m.onnx", samples[0], dynamic_batch=True
    )
    return model, path, samples


def test_correct_mobilenet_export_passes_with_a_small_relative_error(mobilenet_export):
    model, path, samples = mobilenet_export
    with torch.no_grad():
        scale = model(samples[0]).abs().max().item()
    assert scale < 1e-6  # random init: logits far below the old absolute tolerance of 1e-4
    error = check_export(path, model, samples)
    assert 0 < error < 1e-5 and error <= RELATIVE_TOLERANCE


def test_an_onnx_file_with_one_perturbed_weight_fails(mobilenet_export, tmp_path):
    model, path, samples = mobilenet_export
    graph = onnx.load(str(path))
    first_conv = next(node for node in graph.graph.node if node.op_type == "Conv")
    index, weight = next(
        (i, t) for i, t in enumerate(graph.graph.initializer) if t.name == first_conv.input[1]
    )
    graph.graph.initializer[index].CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name)
    )
    corrupted = tmp_path / "corrupted.onnx"
    onnx.save(graph, str(corrupted))

    error = check_export(corrupted, model, samples)
    assert 5e-3 < error < 2e-2  # a 1 % change of the stem conv moves the logits by about 1 %
    (got,) = run_exported(corrupted, samples[0])
    with torch.no_grad():
        assert (got - model(samples[0])).abs().max() < 1e-4  # what the old absolute check accepted


def zero_output_lenet(num_classes: int = 3) -> nn.Module:
    model = cnnkit.create_model("lenet5", num_classes=num_classes).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return model


def test_all_zero_outputs_cannot_be_checked(tmp_path, generator):
    model = zero_output_lenet()
    x = torch.randn(1, 1, 32, 32, generator=generator)
    path = export_onnx(model, tmp_path / "zero.onnx", x)
    with pytest.raises(ConfigError, match=r"output is all zero \(max \|output\| = 0 < 9.9e-32\)"):
        check_export(path, model, [x])


def test_an_all_zero_output_among_several_is_named(tmp_path, generator):
    class TwoHeads(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x * 0

    x = torch.randn(2, 3, generator=generator)
    path = export_onnx(TwoHeads(), tmp_path / "two.onnx", x)
    with pytest.raises(ConfigError, match="output 1 is all zero"):
        check_export(path, TwoHeads(), [x])


def test_cli_refuses_an_all_zero_output_model_in_one_line(tmp_path, capsys, monkeypatch):
    torch.save(zero_output_lenet(num_classes=10).state_dict(), tmp_path / "zero.pth")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "lenet5", "--format", "onnx", "--weights", "zero.pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "cnnkit export: error: cannot check lenet5.onnx: the PyTorch model's output is all zero "
        "(max |output| = 0 < 9.9e-32) on a sample of shape (1, 1, 32, 32), so any file would match it; "
        "check the model's weights (e.g. a last layer of zeros)"
    )


@pytest.mark.parametrize("scale", [1.0, 1e-10, 1e-25])
def test_relative_error_does_not_depend_on_the_outputs_scale(scale, tmp_path, generator):
    reference = nn.Linear(8, 5, bias=False).eval()
    wrong = nn.Linear(8, 5, bias=False).eval()
    with torch.no_grad():
        reference.weight.mul_(scale)
        wrong.weight.copy_(reference.weight * 1.01)  # a file 1 % off at every output
    x = torch.randn(4, 8, generator=generator)
    path = export_onnx(wrong, tmp_path / "wrong.onnx", x)
    assert check_export(path, reference, [x]) == pytest.approx(0.01, rel=1e-4)


def test_outputs_in_the_subnormal_range_cannot_be_checked(tmp_path, generator):
    model = nn.Linear(8, 5, bias=False).eval()
    x = torch.randn(4, 8, generator=generator)
    path = export_onnx(model, tmp_path / "m.onnx", x)
    with torch.no_grad():
        model.weight.mul_(1e-33)
        assert 0 < model(x).abs().max() < 1e-31
    with pytest.raises(
        ConfigError, match=r"output is all zero \(max \|output\| = [0-9.]+e-3[2-9] < 9.9e-32\)"
    ):
        check_export(path, model, [x])
