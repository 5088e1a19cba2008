"""Predict with the exported file: `cnnkit export RUN --format onnx` writes what inference needs into the
file, and `cnnkit.load("model.onnx")` / `cnnkit predict model.onnx` / `cnnkit eval model.onnx` answer as the
PyTorch path does (same top-1 and scores within 1e-4; boxes within 0.5 px with the same labels; class maps
equal on >= 99.9 % of the pixels)."""

import json

import pytest
import torch

import cnnkit
from cnnkit.cli import main
from cnnkit.data import MNIST5k, MNISTDetection, MNISTSegmentation, write_png
from cnnkit.engine.checkpoint import read_metadata
from cnnkit.engine.inference import OnnxPredictor
from cnnkit.errors import DataError
from cnnkit.export import export_onnx, onnx_for_run, read_onnx_metadata

TINY = ["recipe=none", "data.batch_size=8", "epochs=1", "progress=false", "plots=false"]


def _train(tmp_path_factory, name, *args):
    out = tmp_path_factory.mktemp(name) / "run"
    assert main(["train", *args, *TINY, f"output_dir={out}"]) == 0
    return out


def _export(run, path, *extra):
    assert main(["export", str(run), "--format", "onnx", "--output", str(path), *extra]) == 0
    return path


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    return _train(tmp_path_factory, "cls", "model=lenet5", "data.train_size=256", "data.val_size=64")


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    return _train(
        tmp_path_factory,
        "det",
        "task=detection",
        "model=yolo",
        "backbone=resnet18",
        "data=mnist-det",
        "model_kwargs.neck_channels=16",
        "data.image_size=64",
        "data.train_size=32",
        "data.val_size=16",
        "task_kwargs.iou_threshold=0.6",
    )


@pytest.fixture(scope="module")
def yolo_grid_run(tmp_path_factory):
    return _train(
        tmp_path_factory,
        "grid",
        "model=yolo_grid",
        "backbone=resnet18",
        "data=mnist-det",
        "model_kwargs.fpn_channels=16",
        "data.image_size=64",
        "data.train_size=32",
        "data.val_size=16",
        "task_kwargs.iou_threshold=0.6",
    )


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    return _train(
        tmp_path_factory,
        "seg",
        "task=segmentation",
        "model=unet",
        "data=mnist-seg",
        "model_kwargs.base_channels=8",
        "model_kwargs.depth=2",
        "data.image_size=64",
        "data.train_size=32",
        "data.val_size=16",
    )


def _digits():
    """MNIST digits at their own 28x28, a larger one and a non-square crop (resized and centre-cropped)."""
    images = MNIST5k("test", pad_to_32=False).images[:6]
    big = torch.nn.functional.interpolate(images[:1].float(), size=(50, 50)).round().to(torch.uint8)[0]
    return [*images, big, images[0, :, 2:26, :]]


def test_classification_file_answers_as_pytorch(lenet_run, tmp_path):
    path = _export(lenet_run, tmp_path / "lenet.onnx", "--dynamic-batch")
    torch_results = cnnkit.load(lenet_run).predict(_digits(), topk=10)
    onnx = cnnkit.load(path)
    assert isinstance(onnx, OnnxPredictor) and onnx.classes == [str(d) for d in range(10)]
    onnx_results = onnx.predict(_digits(), topk=10, batch_size=3)
    assert len(onnx_results) == len(torch_results) == 8
    for mine, theirs in zip(onnx_results, torch_results):
        assert mine["topk"][0]["label"] == theirs["topk"][0]["label"]
        # every class's probability (the order of near-equal low ones may differ by rounding)
        scores = {t["label"]: t["score"] for t in mine["topk"]}
        assert scores == pytest.approx({t["label"]: t["score"] for t in theirs["topk"]}, abs=1e-4)


def test_file_metadata_holds_what_inference_needs(yolo_run, tmp_path):
    path = _export(yolo_run, tmp_path / "yolo.onnx")
    meta = {k: json.loads(v) for k, v in read_onnx_metadata(path).items()}
    checkpoint = read_metadata(yolo_run / "best.safetensors")
    assert meta["cnnkit.task"] == "detection" and meta["cnnkit.model"] == "yolo"
    assert meta["cnnkit.classes"] == [str(d) for d in range(10)] == checkpoint["classes"]
    assert meta["cnnkit.input"] == checkpoint["input"]
    assert meta["cnnkit.input"]["size"] == 64 and meta["cnnkit.input"]["channels"] == 1
    assert meta["cnnkit.task_options"] == {
        "score_threshold": 0.01,
        "iou_threshold": 0.6,
        "max_detections": 100,
    }
    assert meta["cnnkit.outputs"] == "list"  # one map per pyramid level
    assert meta["cnnkit.config"] == checkpoint["config"]
    assert meta["cnnkit.config"]["model_kwargs"] == {"neck_channels": 16}
    assert meta["cnnkit.version"] == cnnkit.__version__


def _same_detections(mine, theirs, threshold):
    """Each detection of one side has its twin on the other (same label, score within 1e-4, box within
    0.5 px); those within 1e-3 of the score threshold may be on one side only, as rounding decides."""

    def clear(detections):
        return [d for d in detections if d["score"] >= threshold + 1e-3]

    def twin(a, b):
        close = max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 0.5
        return a["label"] == b["label"] and abs(a["score"] - b["score"]) <= 1e-4 and close

    for one, other in ((mine, theirs), (theirs, mine)):
        for a in clear(one["detections"]):
            assert any(twin(a, b) for b in other["detections"]), (a, other["detections"])
    return len(clear(theirs["detections"]))


@pytest.mark.parametrize("run", ["yolo_run", "yolo_grid_run"])
def test_detection_file_answers_as_pytorch(run, request, tmp_path):
    yolo_run = request.getfixturevalue(run)
    path = _export(yolo_run, tmp_path / "yolo.onnx")  # a fixed batch of 1: predicted image by image
    images = [MNISTDetection("val", size=4, image_size=96, seed=3)[i][0] for i in range(4)]
    images.append(images[0][:, :, 10:80])  # not square: letterboxed with padding on the right
    onnx = cnnkit.load(path)
    assert onnx.fixed_batch == 1 and onnx.task.iou_threshold == 0.6
    torch_results = cnnkit.load(yolo_run).predict(images, conf=0.01)
    onnx_results = onnx.predict(images, conf=0.01)
    compared = [_same_detections(a, b, 0.01) for a, b in zip(onnx_results, torch_results)]
    assert sum(compared) >= 5  # something to compare


def test_segmentation_file_answers_as_pytorch(unet_run, tmp_path):
    path = _export(unet_run, tmp_path / "unet.onnx", "--dynamic-batch")
    images = [MNISTSegmentation("val", size=3, image_size=64, seed=3)[i][0] for i in range(3)]
    images.append(MNISTSegmentation("val", size=1, image_size=90, seed=5)[0][0][:, :, 5:80])
    torch_predictor, onnx = cnnkit.load(unet_run), cnnkit.load(path)
    for image in images:
        x = torch_predictor._read(image)
        [expected] = torch_predictor.task.postprocess(*_raw(torch_predictor, x))
        [got] = onnx.task.postprocess(*_raw(onnx, x))
        assert got.mask.shape == expected.mask.shape == image.shape[-2:]
        assert expected.mask.unique().numel() >= 2  # a map with classes to compare, not one colour
        assert (got.mask == expected.mask).float().mean() >= 0.999
    # the JSON answers (share of the pixels per class) agree too
    for mine, theirs in zip(onnx.predict(images), torch_predictor.predict(images)):
        assert mine["classes"].keys() == theirs["classes"].keys()
        assert list(mine["classes"].values()) == pytest.approx(list(theirs["classes"].values()), abs=1e-3)


def _raw(predictor, image):
    x, info = predictor.task.preprocess(image, predictor.input_size)
    with torch.no_grad():
        return predictor.forward(predictor.task.normalize(x[None])), [info]


def test_cli_predict_and_eval_take_the_file(lenet_run, tmp_path, capsys):
    path = _export(lenet_run, tmp_path / "lenet.onnx", "--dynamic-batch")
    image = write_png(MNIST5k("test", pad_to_32=False).images[7], tmp_path / "seven.png")
    capsys.readouterr()
    assert main(["predict", str(path), str(image), "--json", "--topk", "3"]) == 0
    [mine] = json.loads(capsys.readouterr().out)
    assert main(["predict", str(lenet_run), str(image), "--json", "--topk", "3"]) == 0
    [theirs] = json.loads(capsys.readouterr().out)
    assert mine["image"] == theirs["image"] == str(image)
    assert [t["label"] for t in mine["topk"]] == [t["label"] for t in theirs["topk"]]
    assert main(["eval", str(path), "data=mnist5k", "--json", "--output", str(tmp_path / "ev")]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["eval", str(lenet_run), "--json", "--output", str(tmp_path / "ev2")]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert from_file["samples"] == from_run["samples"] == 64
    assert from_file["accuracy"] == from_run["accuracy"]
    assert from_file["confusion"] == from_run["confusion"]
    assert from_file["loss"] == pytest.approx(from_run["loss"], abs=1e-5)
    assert from_file["checkpoint"] == str(path)


def test_predict_runtime_onnxruntime_exports_once_beside_the_run(lenet_run, tmp_path, capsys):
    image = write_png(MNIST5k("test", pad_to_32=False).images[1], tmp_path / "one.png")
    cached = lenet_run / "model.onnx"
    cached.unlink(missing_ok=True)
    assert main(["predict", str(lenet_run), str(image), "--runtime", "onnxruntime", "--json"]) == 0
    [first] = json.loads(capsys.readouterr().out)
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    assert main(["predict", str(lenet_run), str(image), "--runtime", "onnxruntime", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [first]
    assert cached.stat().st_mtime_ns == stamp  # reused, not exported again
    assert onnx_for_run(lenet_run) == cached
    assert main(["predict", str(lenet_run), str(image), "--json"]) == 0
    [theirs] = json.loads(capsys.readouterr().out)
    assert first["topk"][0]["label"] == theirs["topk"][0]["label"]
    assert first["topk"][0]["score"] == pytest.approx(theirs["topk"][0]["score"], abs=1e-4)


def test_a_file_without_cnnkit_metadata_is_one_clear_error(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()).eval()
    path = export_onnx(model, tmp_path / "plain.onnx", torch.zeros(1, 1, 8, 8))
    with pytest.raises(DataError, match="no cnnkit metadata"):
        cnnkit.load(path)
    assert main(["predict", str(path), "x.png"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cnnkit export RUN --format onnx" in err
