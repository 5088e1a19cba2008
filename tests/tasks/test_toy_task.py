"""The task contract from the outside: a toy task and a toy model, defined here with decorators only, train,
evaluate and predict through `cnnkit train / eval / predict` and the Python API, with no change to cnnkit."""

import json
from dataclasses import dataclass

import torch.nn.functional as F
from PIL import Image
from torch import nn

import cnnkit
from cnnkit.cli import main
from cnnkit.data import MNIST5k
from cnnkit.data.sources import RunData
from cnnkit.data.wrappers import InMemory
from cnnkit.tasks import Prediction, Task, register_model, register_task

CLASSES = ["even", "odd"]


@dataclass
class Parity(Prediction):
    label: int
    score: float

    def to_dict(self, classes):
        return {"parity": classes[self.label], "score": round(self.score, 4)}


class ParityEvaluator:
    def __init__(self):
        self.correct = self.count = 0

    def update(self, outputs, targets):
        self.correct += int((outputs.argmax(1) == targets).sum())
        self.count += len(targets)

    def reduce(self, all_reduce):
        pass

    def compute(self):
        return {"accuracy": self.correct / max(self.count, 1), "samples": self.count}


@register_task
class ParityTask(Task):
    """Is the MNIST digit even or odd?"""

    name = "toy_parity"
    default_model = "toy_parity_net"
    default_metric = "accuracy"
    data_names = "mnist5k"

    @classmethod
    def build_data(cls, config):
        def split(name, count):
            digits = MNIST5k(name, pad_to_32=True)
            return InMemory([(digits.images[i], int(digits.labels[i]) % 2) for i in range(count)], CLASSES)

        return RunData(split("train", 400), split("test", 100), CLASSES, 1, 32, (0.13,), (0.31,))

    def prepare(self, batch, *, train, device, generator=None):
        images, labels = batch
        return self.normalize(images.to(device)), labels.to(device)

    def criterion(self, outputs, targets):
        return {"loss": F.cross_entropy(outputs, targets)}

    def postprocess(self, outputs, infos, options=None):
        probs = outputs.softmax(1)
        return [Parity(int(p.argmax()), float(p.max())) for p in probs]

    def evaluator(self):
        return ParityEvaluator()


@register_model(task="toy_parity", input_size=(1, 32, 32))
def toy_parity_net(num_classes: int = 2, in_chans: int = 1) -> nn.Module:
    """A tiny CNN for the toy task."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


def test_a_task_and_model_defined_outside_cnnkit_train_evaluate_and_predict(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "task=toy_parity", "epochs=3", "optim.lr=0.01", "progress=false", f"output_dir={out}"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out) and lines[-2].startswith("accuracy ")
    assert "model: toy_parity_net" in (out / "config.yaml").read_text()
    assert (out / "curves.png").is_file() and (out / "best.safetensors").is_file()

    assert main(["eval", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["task"] == "toy_parity" and metrics["samples"] == 100
    assert metrics["accuracy"] > 0.6  # chance is 0.5
    assert main(["eval", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out

    digits = MNIST5k("test", pad_to_32=True)
    path = tmp_path / "digit.png"
    Image.fromarray(digits.images[0, 0].numpy()).save(path)
    assert main(["predict", str(out), str(path), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["image"] == str(path) and result["parity"] in CLASSES and 0.5 <= result["score"] <= 1
    assert cnnkit.load(out).predict([str(path)]) == [result]
    assert cnnkit.evaluate(out)["accuracy"] == metrics["accuracy"]


def test_the_toy_model_is_listed_under_its_task(capsys):
    assert cnnkit.list_models(task="toy_parity") == ["toy_parity_net"]
    assert main(["models", "--task", "toy_parity", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "toy_parity_net" and row["task"] == "toy_parity" and row["params"] is None
    assert main(["train", "task=toy_parity", "model=resnet18"]) == 2
    assert "is a classification model, not a toy_parity model" in capsys.readouterr().err
