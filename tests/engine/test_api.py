"""The Python API mirrors the CLI: `cnnkit.train`, `cnnkit.load(...).predict`, `cnnkit.evaluate`."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cnnkit
from cnnkit.cli import main
from cnnkit.data import MNIST5k
from cnnkit.errors import ConfigError, DataError

SMALL = {
    "epochs": 2,
    "progress": False,
    "plots": False,
    "data": {"train_size": 1000, "val_size": 200, "batch_size": 32},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return cnnkit.train(model="lenet5", **SMALL, **{"optim.lr": 0.004}, output_dir=str(out))


def test_train_returns_the_run(run):
    assert run.dir.is_dir() and run.best == run.dir / "best.safetensors" and run.best.is_file()
    assert run.metrics["accuracy"] == run.history[-1]["accuracy"] and 0.5 < run.metrics["accuracy"] <= 1
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.004 and saved["epochs"] == 2 and saved["data"]["train_size"] == 1000
    assert saved["task"] == "classification" and saved["model"] == "lenet5" and saved["recipe"] == "lenet5"


def test_nested_keys_as_a_mapping_or_dotted_are_the_same(tmp_path):
    from cnnkit.engine.config import load_config

    nested = load_config(values={"optim": {"lr": 1e-3}, "data": "mnist5k"})
    dotted = load_config(values={"optim.lr": 1e-3})
    assert nested.optim.lr == dotted.optim.lr == 1e-3
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        cnnkit.train(epoch=3, output_dir=str(tmp_path / "x"))


def _digit_png(tmp_path, index):
    path = tmp_path / f"digit{index}.png"
    Image.fromarray(MNIST5k("test", pad_to_32=False).images[index, 0].numpy()).save(path)
    return path


def test_predict_takes_paths_pil_arrays_and_tensors_and_matches_the_cli(run, tmp_path, capsys):
    path = _digit_png(tmp_path, 3)
    predictor = cnnkit.load(run.dir)
    pil = Image.open(path)
    array = np.asarray(pil)
    tensor = torch.from_numpy(array)[None]
    results = predictor.predict([str(path), pil, array, tensor, tensor.float() / 255], topk=3)
    assert [r["image"] for r in results] == [str(path), 1, 2, 3, 4]
    first = results[0]["topk"]
    assert len(first) == 3 and first[0]["score"] >= first[1]["score"] >= first[2]["score"]
    for other in results[1:]:
        assert other["topk"] == first  # the same digit, whatever form it came in
    assert main(["predict", str(run.dir), str(path), "--json", "--topk", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == results[:1]
    with pytest.raises(DataError, match="shape"):
        predictor.predict(np.zeros((2, 2, 2, 2), dtype=np.uint8))


def test_evaluate_is_what_cnnkit_eval_prints(run, capsys):
    metrics = cnnkit.evaluate(run.dir)
    assert metrics["task"] == "classification" and metrics["samples"] == 200
    assert metrics["accuracy"] == pytest.approx(run.best_value)
    assert main(["eval", str(run.dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in printed.items() if not k.endswith("_png")} == json.loads(json.dumps(metrics))


def _digit_folder(root, per_class, classes=range(10)):
    digits = MNIST5k("test", pad_to_32=False)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            index = (digits.labels == c).nonzero().flatten()[:per_class]
            for i in index.tolist():
                Image.fromarray(digits.images[i, 0].numpy()).save(folder / f"{i}.png")


def test_evaluate_on_another_dataset(run, tmp_path, capsys):
    _digit_folder(tmp_path / "digits", 3)
    metrics = cnnkit.evaluate(run.dir, data=f"imagefolder:{tmp_path / 'digits'}")
    assert metrics["samples"] == 30 and 0.3 < metrics["accuracy"] <= 1
    assert main(["eval", str(run.dir), f"data=imagefolder:{tmp_path / 'digits'}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == metrics["accuracy"]
    _digit_folder(tmp_path / "three", 1, classes=range(3))
    with pytest.raises(DataError, match="differ from the model's"):
        cnnkit.evaluate(run.dir, data=f"imagefolder:{tmp_path / 'three'}")
    assert main(["eval", str(run.dir), "coco:somewhere"]) == 2
    assert "expected data=NAME" in capsys.readouterr().err
