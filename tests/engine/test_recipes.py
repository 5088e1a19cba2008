"""Shipped recipes: files that load, `recipe=NAME`, the recipe of a run's model and data as its defaults,
`cnnkit recipes`; and the two multi-step features they use, pretraining and phases."""

import json

import pytest
import yaml

import cnnkit
from cnnkit.cli import main
from cnnkit.engine.build import phase_configs
from cnnkit.engine.checkpoint import read_metadata
from cnnkit.engine.config import load_config
from cnnkit.engine.recipes import list_recipes
from cnnkit.engine.trainer import Callback
from cnnkit.errors import ConfigError

NAMES = [
    "attention_unet",
    "deeplabv3",
    "deeplabv3_os8",
    "deeplabv3plus",
    "fast_rcnn",
    "faster_rcnn",
    "lenet5",
    "mask_rcnn",
    "rcnn",
    "unet",
    "unetplusplus",
    "yolo",
    "yolo_grid",
    "yolo_large",
]


def test_every_shipped_recipe_loads_and_resolves():
    assert [r.name for r in list_recipes()] == NAMES
    for recipe in list_recipes():
        config = load_config(None, [f"recipe={recipe.name}"])
        assert config.recipe == recipe.name and config.model == recipe.model
        assert config.data.name == recipe.data
        assert recipe.description and recipe.measured["metric"]


def test_a_run_naming_a_recipes_model_and_data_starts_from_it():
    config = load_config(None, ["task=detection", "model=yolo", "data=mnist-det"])
    assert config.recipe == "yolo" and config.backbone == "mobilenet_v3_small" and config.epochs == 12
    assert config.model_kwargs == {"neck_channels": 64, "head_channels": 48} and config.close_mosaic == 2
    grid = load_config(None, ["task=detection", "model=yolo_grid", "data=mnist-det"])
    assert grid.recipe == "yolo_grid" and grid.epochs == 8 and grid.data.batch_size == 32
    assert grid.model_kwargs == {"fpn_channels": 64, "aspect_ratios": [1.0]}
    assert load_config(None, ["model=yolo", "data=mnist-det", "epochs=2"]).epochs == 2  # overrides win
    bare = load_config(None, ["task=detection", "model=yolo", "data=mnist-det", "recipe=none"])
    assert bare.backbone is None and bare.epochs == 12 and bare.model_kwargs == {}
    other_data = load_config(None, ["model=yolo", "data=shapes"])
    assert other_data.recipe is None and other_data.backbone is None


def test_default_run_is_the_lenet5_recipe_and_unknown_recipes_are_named():
    config = load_config()
    assert (config.task, config.model, config.data.name, config.recipe) == (
        "classification",
        "lenet5",
        "mnist5k",
        "lenet5",
    )
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        load_config(None, ["recipe=unte"])


def test_unet_recipe_is_one_run_with_pretraining_and_a_resizing_phase():
    config = load_config(None, ["recipe=unet"])
    assert config.pretrain["model"] == "mobilenet_v3_large" and config.pretrain["epochs"] == 8
    first, second = phase_configs(config)
    assert (first.data.image_size, first.epochs, first.optim.lr) == (64, 12, 0.003)
    assert (second.data.image_size, second.epochs, second.optim.lr) == (128, 3, 0.001)
    assert second.backbone == "mobilenet_v3_large" and second.task_kwargs == {"loss": "ce+dice"}
    with pytest.raises(ConfigError, match="a phase changes only"):
        phase_configs(load_config(None, ["phases=[{epochs: 1, model: resnet18}]"]))
    with pytest.raises(ConfigError, match="needs its number of epochs"):
        phase_configs(load_config(None, ["phases=[{data.image_size: 64}]"]))


def test_cnnkit_recipes_lists_each_with_its_measured_metric(capsys):
    assert main(["recipes", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == NAMES
    assert rows["mask_rcnn"]["task"] == "segmentation" and rows["unet"]["metric"] == "miou"
    assert rows["unet"]["value"] >= rows["unet"]["target"] and rows["yolo"]["data"] == "mnist-det"
    assert main(["recipes"]) == 0
    assert "faster_rcnn" in capsys.readouterr().out


class _Sizes(Callback):
    """Records each epoch's training image size and learning rate."""

    def __init__(self):
        self.sizes, self.lrs = [], []

    def on_epoch_start(self, trainer):
        images, _ = next(iter(trainer.train_loader.epoch(0)))
        self.sizes.append(images.shape[-1])
        self.lrs.append(trainer.optimizer.param_groups[0]["initial_lr"])


def test_phases_change_the_image_size_and_restart_the_schedule(tmp_path):
    sizes = _Sizes()
    run = cnnkit.train(
        task="segmentation",
        model="unet",
        data={"name": "mnist-seg", "train_size": 16, "val_size": 8, "batch_size": 8, "image_size": 32},
        model_kwargs={"base_channels": 4, "depth": 2},
        epochs=1,
        phases=[{"epochs": 2, "data.image_size": 48, "optim.lr": 0.001}],
        progress=False,
        plots=False,
        recipe="none",
        output_dir=str(tmp_path / "run"),
        callbacks=[sizes],
    )
    assert sizes.sizes == [32, 48, 48] and sizes.lrs == pytest.approx([0.003, 0.001, 0.001])
    assert len(run.history) == 3 and [row["epoch"] for row in run.history] == [1, 2, 3]
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert saved["phases"] == [{"epochs": 2, "data.image_size": 48, "optim.lr": 0.001}]
    # the trained model is evaluated and predicts at the last phase's size, where its last metrics came from
    assert read_metadata(run.dir / "last.safetensors")["input"]["size"] == 48
    assert cnnkit.load(run.dir).input_size == 48
    last = cnnkit.evaluate(run.dir / "last.safetensors")
    assert last["miou"] == pytest.approx(run.history[-1]["miou"]) and last["samples"] == 8
    onnx = tmp_path / "unet.onnx"
    assert main(["export", str(run.dir / "last.safetensors"), "--format", "onnx", "--output", str(onnx)]) == 0
    assert cnnkit.load(onnx).input_size == 48
    assert cnnkit.evaluate(onnx)["miou"] == pytest.approx(last["miou"], abs=1e-3)


def test_pretraining_runs_first_and_hands_its_weights_on(tmp_path):
    small = {"train_size": 200, "val_size": 100}
    run = cnnkit.train(
        model="lenet5",
        epochs=1,
        data=small,
        pretrain={"model": "lenet5", "epochs": 1, "data": small},
        progress=False,
        plots=False,
        output_dir=str(tmp_path / "run"),
    )
    pretrained = run.dir / "pretrain" / "best.safetensors"
    assert pretrained.is_file() and (run.dir / "pretrain" / "metrics.csv").is_file()
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert saved["weights"] == str(pretrained)


def test_a_bad_model_option_stops_the_run_before_pretraining(tmp_path):
    # The model is built once before the pretraining step, so its error comes in seconds, not minutes.
    with pytest.raises(ConfigError, match="score_stages"):
        cnnkit.train(
            recipe="unet",
            model_kwargs={"score_stages": [9]},
            data={"train_size": 16, "val_size": 8},
            progress=False,
            plots=False,
            output_dir=str(tmp_path / "run"),
        )
    assert not (tmp_path / "run" / "pretrain").exists()
