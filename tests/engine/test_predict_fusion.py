"""`cnnkit.load(RUN)` runs the model prepared for inference: BatchNorms folded into the layers before them
and the channels_last layout, with the same outputs as the model as trained (relative 1e-4), the same
class and methods; `fuse=False, channels_last=False` gives the model as trained; a model that does not
trace as a whole still loads, folded child by child."""

import pytest
import torch
import torch.fx
from torch import nn

import cnnkit
from cnnkit.engine.build import build_model
from cnnkit.engine.checkpoint import save_weights
from cnnkit.engine.config import config_to_dict, load_config
from cnnkit.engine.inference import load_run_model
from cnnkit.tasks.detection.anchor_free import AnchorFreeYOLO

RELATIVE = 1e-4


def _write_run(root, generator, **values):
    """A run directory with a randomly initialised model whose BatchNorms have random statistics and
    affines (so that folding them changes the weights), and the metadata `cnnkit train` writes."""
    size, channels = values.pop("size"), 1
    config = load_config(None, values={**values, "recipe": "none", "data.image_size": size})
    classes = [str(c) for c in range(3)]
    torch.manual_seed(0)
    model = build_model(config, classes, channels).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    meta = {
        "config": config_to_dict(config),
        "classes": classes,
        "input": {"channels": channels, "size": size, "mean": [0.5], "std": [0.25]},
    }
    root.mkdir()
    save_weights(root / "best.safetensors", model, meta)
    return root


def _relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1))


def _batchnorms(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.fixture(scope="module")
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory, generator):
    return _write_run(
        tmp_path_factory.mktemp("fusion") / "yolo",
        generator,
        task="detection",
        model="yolo",
        backbone="mobilenet_v3_small",
        model_kwargs={"neck_channels": 16},
        size=64,
    )


@pytest.fixture(scope="module")
def images():
    return [torch.randint(0, 256, (1, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)]


def test_load_runs_the_folded_model_in_channels_last(yolo_run):
    trained, _, _ = load_run_model(yolo_run)
    predictor = cnnkit.load(yolo_run, device="cpu")
    model = predictor.model
    assert isinstance(model, AnchorFreeYOLO) and predictor.task.model is model  # one prepared module
    assert _batchnorms(trained) > 40 and _batchnorms(model) == 0
    assert predictor.channels_last
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = trained(x), predictor.forward(x)
    assert len(actual) == len(expected) == 3
    for level_actual, level_expected in zip(actual, expected):
        assert level_actual.shape == level_expected.shape
        assert _relative_error(level_actual, level_expected) < RELATIVE


def test_switches_give_the_model_as_trained(yolo_run, images):
    trained, _, _ = load_run_model(yolo_run)
    plain = cnnkit.load(yolo_run, device="cpu", fuse=False, channels_last=False)
    assert _batchnorms(plain.model) == _batchnorms(trained) and not plain.channels_last
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a, b in zip(plain.forward(x), trained(x)):
            assert torch.equal(a, b)
    folded_only = cnnkit.load(yolo_run, device="cpu", channels_last=False)
    assert _batchnorms(folded_only.model) == 0 and not folded_only.channels_last
    conv = next(
        m for m in folded_only.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    )
    assert conv.weight.is_contiguous()
    # predictions through the whole path (decode, NMS, original pixels) agree
    fast = cnnkit.load(yolo_run, device="cpu").predict(images, conf=0.0)
    slow = plain.predict(images, conf=0.0)
    scores = [d["score"] for d in slow[0]["detections"]]
    assert len(scores) > 0
    assert [d["score"] for d in fast[0]["detections"]][:5] == pytest.approx(scores[:5], abs=1e-3)


def test_a_model_that_does_not_trace_still_loads_and_folds(tmp_path, generator):
    run = _write_run(
        tmp_path / "frcnn",
        generator,
        task="detection",
        model="faster_rcnn",
        backbone="resnet18",
        model_kwargs={"fpn_channels": 16},
        size=64,
    )
    trained, _, _ = load_run_model(run)
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(trained)
    predictor = cnnkit.load(run, device="cpu")
    assert type(predictor.model) is type(trained)
    assert _batchnorms(predictor.model) < _batchnorms(trained)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = trained.backbone(x)
        actual = predictor.model.backbone(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(actual, expected):
        assert _relative_error(a, b) < RELATIVE
    (result,) = predictor.predict([torch.zeros(1, 64, 64, dtype=torch.uint8)])
    assert result["image"] == 0 and "detections" in result
