"""``cnnkit export`` and the export functions: files that run, checked against PyTorch; loud errors."""

from __future__ import annotations

import pathlib

import onnx
import pytest
import torch

import cnnkit
from cnnkit.cli import main
from cnnkit.engine.checkpoint import save_weights
from cnnkit.engine.config import TrainConfig, config_to_dict
from cnnkit.errors import ConfigError
from cnnkit.export import check_export, export_onnx, export_torchscript, run_exported


def reported_error(out: str) -> float:
    line = next(line for line in out.splitlines() if line.startswith("relative error vs PyTorch:"))
    assert line.endswith("; tolerance 0.0001)")
    return float(line.split(":")[1].split()[0])


def test_export_onnx_dynamic_batch(tmp_path, capsys, generator):
    output = tmp_path / "lenet.onnx"
    assert main(["export", "lenet5", "--format", "onnx", "--dynamic-batch", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {output} (onnx, input 1x32x32, batch dynamic)" in out and ", batch 1, 3;" in out
    assert 0 < reported_error(out) < 1e-5
    graph = onnx.load(str(output)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)
    (y,) = run_exported(output, torch.randn(5, 1, 32, 32, generator=generator))
    assert y.shape == (5, 10)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_torchscript_of_a_fused_resnet(tmp_path, capsys, generator):
    output = tmp_path / "r18.pt"
    argv = ["export", "resnet18", "--format", "torchscript", "--input", "3x64x64", "--output", str(output)]
    assert main(argv) == 0
    assert reported_error(capsys.readouterr().out) < 1e-5
    scripted = torch.jit.load(str(output))
    assert not any("BatchNorm" in m.original_name for m in scripted.modules())


def test_export_a_training_checkpoint(tmp_path, capsys, generator, monkeypatch):
    model = cnnkit.create_model("lenet5", num_classes=3)
    meta = {
        "config": config_to_dict(TrainConfig(model="lenet5")),
        "classes": ["a", "b", "c"],
        "input": {"channels": 1, "size": 32, "mean": [0.1], "std": [0.3]},
        "step": 1,
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_weights(run_dir / "best.safetensors", model, meta)
    monkeypatch.chdir(tmp_path)
    assert main(["export", "run", "--format", "onnx"]) == 0
    assert reported_error(capsys.readouterr().out) < 1e-5
    (y,) = run_exported(tmp_path / "run.onnx", torch.zeros(1, 1, 32, 32))
    with torch.no_grad():
        assert torch.allclose(y, model.eval()(torch.zeros(1, 1, 32, 32)), atol=1e-5)


def test_mismatch_past_tolerance_fails_with_exit_code_1(tmp_path, capsys, monkeypatch):
    import cnnkit.export.formats as formats

    original = formats.run_exported
    monkeypatch.setattr(formats, "run_exported", lambda path, x: [y * 1.001 for y in original(path, x)])
    output = tmp_path / "lenet.onnx"
    assert main(["export", "lenet5", "--format", "onnx", "--output", str(output)]) == 1
    captured = capsys.readouterr()
    assert reported_error(captured.out) == pytest.approx(1e-3, rel=1e-3)
    assert (
        captured.err.strip()
        == f"cnnkit export: error: {output} differs from the PyTorch model: relative error 0.001 > 0.0001"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lenet", "--format", "onnx"], "unknown model 'lenet'"),
        (["runs/missing", "--format", "onnx"], "checkpoint not found: runs/missing"),
        (["missing.safetensors", "--format", "onnx"], "checkpoint not found: missing.safetensors"),
        (["lenet5", "--format", "onnx", "--input", "1x32"], "--input must be CxHxW"),
        (["resnet18", "--format", "onnx", "--input", "3x16x16"], "resnet18 needs an input of at least 32x32"),
        (["lenet5", "--format", "onnx", "--input", "1x64x64"], "lenet5 cannot run on a 1x64x64 input"),
        (["lenet5", "--format", "onnx", "--opset", "99"], "--opset must be between 7 and 20"),
        (["lenet5", "--format", "onnx", "--weights", "nowhere.pth"], "nowhere.pth"),
        (
            ["lenet5", "--format", "torchscript", "--output", "no/dir/m.pt"],
            "--output folder not found: no/dir",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not list(pathlib.Path(tmp_path).iterdir())


def test_export_functions_round_trip(tmp_path, generator):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()).eval()
    x = torch.randn(1, 3, 6, 6, generator=generator)
    static = export_onnx(model, tmp_path / "m.onnx", x)
    assert check_export(static, model, [x]) < 1e-6
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_exported(static, torch.randn(2, 3, 6, 6, generator=generator))
    scripted = export_torchscript(model, tmp_path / "m.pt", x)
    assert check_export(scripted, model, [x, torch.randn(3, 3, 6, 6, generator=generator)]) == 0.0
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "bad.onnx", x, opset=6)
