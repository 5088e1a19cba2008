"""`cnnkit train / eval / predict` for detection and segmentation, and the data a run names."""

import json
import re

import pytest
import torch

from cnnkit.cli import main
from cnnkit.data import MNISTDetection, MNISTSegmentation, write_coco, write_png, write_voc, write_yolo
from cnnkit.data.wrappers import letterbox
from cnnkit.engine.build import build_data, build_model
from cnnkit.engine.config import load_config
from cnnkit.errors import ConfigError, DataError

TINY = [
    "recipe=none",  # the tiny settings below, not the shipped recipe of the model and data
    "data.train_size=16",
    "data.val_size=8",
    "data.batch_size=8",
    "data.image_size=64",
    "epochs=1",
    "progress=false",
]


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "run"
    args = ["train", "task=detection", "model=yolo", "data=mnist-det", "model_kwargs.neck_channels=16", *TINY]
    assert main([*args, f"output_dir={out}"]) == 0
    return out


UNET_TRAIN = [
    "train",
    "task=segmentation",
    "model=unet",
    "data=mnist-seg",
    "model_kwargs.base_channels=8",
    *TINY,
]
"""`cnnkit train` of a tiny classic U-Net on MNIST-Seg (add `output_dir=`)."""


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    assert main([*UNET_TRAIN, f"output_dir={out}"]) == 0
    return out


def test_detection_run_writes_checkpoints_metrics_and_plots(yolo_run):
    for name in ("best.safetensors", "last.safetensors", "metrics.csv", "curves.png", "pr_curves.png"):
        assert (yolo_run / name).is_file(), name
    assert (yolo_run / "predictions.png").stat().st_size > 1000
    state = json.loads((yolo_run / "trainer_state.json").read_text())
    row = state["history"][-1]
    assert {"map", "map50", "map75", "train_loss"} <= set(row)
    assert 0.0 <= row["map50"] <= 1.0


def test_detection_eval_json_and_table(yolo_run, tmp_path, capsys):
    assert main(["eval", str(yolo_run), "--json", "--output", str(tmp_path)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    state = json.loads((yolo_run / "trainer_state.json").read_text())
    assert metrics["map50"] == pytest.approx(state["history"][-1]["map50"], abs=1e-9)
    assert metrics["images"] == 8 and len(metrics["per_class"]) == 10
    assert (tmp_path / "pr_curves.png").is_file()
    assert main(["eval", str(yolo_run), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "AP50" in out and "mAP@.5" in out


def test_detection_predict_draws_boxes_in_original_pixels(yolo_run, tmp_path, capsys):
    image, _ = MNISTDetection("val", size=1, image_size=96, seed=3)[0]
    path = write_png(image, tmp_path / "digits.png")
    out_dir = tmp_path / "drawn"
    assert main(["predict", str(yolo_run), str(path), "--conf", "0", "--output", str(out_dir), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["output"] == str(out_dir / "digits.png") and (out_dir / "digits.png").is_file()
    boxes = torch.tensor([d["box"] for d in result["detections"]]).reshape(-1, 4)
    # letterboxed 96 -> 64 and mapped back: boxes lie in the 96 x 96 original (clipped at 64 / (64/96))
    assert len(boxes) > 0 and boxes.min() >= 0 and boxes.max() <= 96 + 1e-3


def test_segmentation_run_eval_and_predict(unet_run, tmp_path, capsys):
    assert (unet_run / "predictions.png").is_file() and (unet_run / "curves.png").is_file()
    assert main(["eval", str(unet_run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert len(metrics["per_class_iou"]) == 11 and 0.0 <= metrics["miou"] <= 1.0
    assert metrics["samples"] == 8
    assert main(["eval", str(unet_run)]) == 0
    assert "background" in capsys.readouterr().out
    image, _ = MNISTSegmentation("val", size=1, image_size=64, seed=3)[0]
    path = write_png(image, tmp_path / "seg.png")
    assert main(["predict", str(unet_run), str(path), "--output", str(tmp_path / "o")]) == 0
    assert "seg.png" in capsys.readouterr().out and (tmp_path / "o" / "seg.png").is_file()


def test_task_model_mismatch_is_one_clear_error(tmp_path, capsys):
    code = main(["train", "task=detection", "model=unet", "data=mnist-det", f"output_dir={tmp_path}/r"])
    assert code == 2
    assert "not a detection model" in capsys.readouterr().err
    code = main(["train", "task=segmentation", "model=unet", "data=mnist5k", f"output_dir={tmp_path}/r2"])
    assert code == 2
    assert "mnist-seg" in capsys.readouterr().err


def test_build_model_per_task():
    det = build_model(load_config(None, ["task=detection", "model=yolo"]), list("ab"), 1)
    assert det.num_classes == 2
    seg = build_model(load_config(None, ["task=segmentation", "model=unet"]), list("ab"), 1)
    assert seg(torch.zeros(1, 1, 33, 35)).shape == (1, 3, 33, 35)  # background added
    with pytest.raises(ConfigError, match="fcn"):
        build_model(load_config(None, ["task=segmentation", "model=fcm"]), list("ab"), 1)


def test_letterbox_scales_boxes_and_masks():
    image = torch.arange(2 * 40 * 80, dtype=torch.int64).reshape(2, 40, 80).to(torch.uint8)
    target = {
        "boxes": torch.tensor([[8.0, 4.0, 40.0, 20.0]]),
        "masks": torch.zeros(1, 40, 80, dtype=torch.uint8),
        "labels": torch.tensor([1]),
    }
    target["masks"][0, 4:20, 8:40] = 1
    out, moved = letterbox(image, target, 40)
    assert out.shape == (2, 40, 40) and moved["scale"].item() == 0.5
    assert moved["boxes"].tolist() == [[4.0, 2.0, 20.0, 10.0]]
    assert out[:, 20:].eq(0).all()  # padding below the 20-row image
    ys, xs = moved["masks"][0].nonzero(as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (2, 9, 4, 19)
    assert moved["labels"].tolist() == [1]


@pytest.mark.parametrize("kind", ["coco", "yolo", "voc"])
def test_user_detection_data_in_each_format(kind, tmp_path):
    source = {s: MNISTDetection(s, size=3, image_size=48, seed=7) for s in ("train", "val")}
    for split, dataset in source.items():
        if kind == "coco":
            write_coco(dataset, tmp_path / f"{split}.json", tmp_path / split)
        elif kind == "yolo":
            write_yolo(dataset, tmp_path / split)
        else:
            write_voc(dataset, tmp_path / split)
    if kind == "voc":
        (tmp_path / "classes.txt").write_text("\n".join(MNISTDetection.classes))
    config = load_config(
        None,
        [
            "task=detection",
            "model=yolo",
            f"data={kind}:{tmp_path}",
            "data.image_size=96",
            "model_kwargs.in_chans=1",
        ],
    )
    data = build_data(config)
    assert data.classes == MNISTDetection.classes and data.in_chans == 1 and len(data.val) == 3
    image, target = data.train[1]
    original_image, original = source["train"][1]
    assert image.shape == (1, 96, 96)
    torch.testing.assert_close(target["boxes"], original["boxes"] * 2, atol=1e-3, rtol=0)
    assert target["labels"].tolist() == original["labels"].tolist()


@pytest.mark.parametrize("name", ["ROOT", "ROOT/data.yaml"])
def test_yolo_dataset_yaml_is_read_by_a_run(name, tmp_path):
    source = {s: MNISTDetection(s, size=3, image_size=48, seed=7) for s in ("train", "val")}
    write_yolo(source, tmp_path / "set")
    data_name = "yolo:" + name.replace("ROOT", str(tmp_path / "set"))
    config = load_config(
        None, ["model=yolo", f"data={data_name}", "data.image_size=48", "model_kwargs.in_chans=1"]
    )
    data = build_data(config)
    assert data.classes == MNISTDetection.classes and len(data.train) == len(data.val) == 3
    image, target = data.val[2]
    assert torch.equal(image, source["val"][2][0])
    torch.testing.assert_close(target["boxes"], source["val"][2][1]["boxes"], atol=1e-3, rtol=0)


def test_missing_split_names_the_folder(tmp_path):
    (tmp_path / "train").mkdir()
    config = load_config(None, ["task=detection", "model=yolo", f"data=yolo:{tmp_path}"])
    with pytest.raises(DataError, match="val/ folder"):
        build_data(config)


@pytest.mark.parametrize("which", ["yolo", "unet"])
def test_export_task_checkpoint_checks_raw_outputs(which, yolo_run, unet_run, tmp_path, capsys):
    run = yolo_run if which == "yolo" else unet_run
    out = tmp_path / f"{which}.pt"
    assert main(["export", str(run), "--format", "torchscript", "--output", str(out)]) == 0
    assert "relative error vs PyTorch" in capsys.readouterr().out and out.is_file()


def test_bn_momentum_raised_for_runs_from_scratch_only():
    from cnnkit.engine.build import set_bn_momentum

    def momenta(overrides):
        config = load_config(None, ["model=mobilenet_v3_small", *overrides])
        model = build_model(config, list("ab"), 3)
        set_bn_momentum(model, config)
        return {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}

    assert momenta([]) == {0.1}  # the builder's 0.01 lags in a short run from scratch
    assert momenta(["bn_momentum=0.03"]) == {0.03}
    assert momenta(["weights=some.safetensors"]) == {0.01}  # fine-tuning keeps the weights' own


TWO_STAGE_SMALL = [
    "model_kwargs.fpn_channels=16",
    "model_kwargs.out_indices=[-3,-2,-1]",
    "model_kwargs.anchor_sizes=[[16],[32],[64],[128]]",
    "model_kwargs.rpn_post_nms_top_n=[50,20]",
    "model_kwargs.representation_size=32",
    "model_kwargs.box_batch_size_per_image=32",
]


def test_mask_rcnn_trains_evaluates_and_predicts_masks(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "task=segmentation", "model=mask_rcnn", "data=mnist-seg", "model_kwargs.mask_channels=8"]
    assert main([*args, *TWO_STAGE_SMALL, *TINY, f"output_dir={out}"]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith("mask mAP ")
    state = json.loads((out / "trainer_state.json").read_text())
    assert {"map50", "mask_map", "mask_map50"} <= set(state["history"][-1])
    assert (out / "pr_curves.png").is_file() and (out / "predictions.png").is_file()
    assert main(["eval", str(out), "--json", "--output", str(tmp_path / "ev")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert len(metrics["mask_per_class"]) == 10 and (tmp_path / "ev" / "mask_pr_curves.png").is_file()
    image, _ = MNISTSegmentation("val", size=1, image_size=64, seed=3)[0]
    path = write_png(image, tmp_path / "one.png")
    assert main(["predict", str(out), str(path), "--conf", "0", "--output", str(tmp_path / "p")]) == 0
    assert "objects" in capsys.readouterr().out and (tmp_path / "p" / "one.png").is_file()


def test_faster_rcnn_trains_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "task=detection", "model=faster_rcnn", "data=mnist-det", *TWO_STAGE_SMALL, *TINY]
    assert main([*args, f"output_dir={out}"]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith("mAP@[.5:.95] ")
    assert main(["export", str(out), "--format", "torchscript"]) == 2
    assert "cannot be exported" in capsys.readouterr().err


def test_task_kwargs_reach_the_task_and_unknown_ones_are_named():
    from cnnkit.data.sources import RunData
    from cnnkit.engine.build import build_task

    data = RunData([], [], list("ab"), 1, 32, (0.5,), (0.5,))
    config = load_config(None, ["task=segmentation", "model=unet", "task_kwargs.loss=ce+dice"])
    assert build_task(config, None, data.classes, (0.5,), (0.5,)).loss == "ce+dice"
    config = load_config(None, ["task=segmentation", "model=unet", "task_kwargs.los=dice"])
    with pytest.raises(ConfigError, match="task_kwargs.los.*did you mean 'loss'"):
        build_task(config, None, data.classes, (0.5,), (0.5,))


def test_weights_from_a_cnnkit_run_keep_that_runs_normalization(tmp_path):
    """A backbone pretrained by `cnnkit train` (MNIST statistics) must not be fed ImageNet-normalised inputs."""
    from cnnkit.data.sources import RunData
    from cnnkit.engine.build import normalization
    from cnnkit.engine.checkpoint import save_weights

    stored = tmp_path / "best.safetensors"
    save_weights(stored, {"w": torch.zeros(1)}, {"input": {"channels": 1, "mean": [0.13], "std": [0.31]}})
    plain = tmp_path / "plain.safetensors"
    save_weights(plain, {"w": torch.zeros(1)})
    data = RunData(train=[], val=[], classes=["a"], in_chans=1, image_size=32, mean=(0.5,), std=(0.2,))

    def norm(weights, in_chans=1):
        overrides = ["task=segmentation", "model=unet", "backbone=mobilenet_v3_large"]
        config = load_config(None, [*overrides, *([f"weights={weights}"] if weights else [])])
        return normalization(config, data, in_chans)

    assert norm(None) == ((0.5,), (0.2,))  # from scratch: the data's own
    assert norm(stored) == ((0.13,), (0.31,))  # the pretraining run's
    assert norm(stored, in_chans=3) == ((0.13,) * 3, (0.31,) * 3)
    imagenet = norm(plain)  # other weights: the card's (ImageNet), averaged to one channel
    assert imagenet[0][0] == pytest.approx(sum((0.485, 0.456, 0.406)) / 3)


def test_checkpoint_that_does_not_fit_its_config_is_one_line_error(unet_run, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    from cnnkit.engine.checkpoint import read_metadata, save_weights

    run = tmp_path / "run"
    shutil.copytree(unet_run, run)
    state = load_file(str(run / "best.safetensors"))
    meta = read_metadata(run / "best.safetensors")
    name = next(k for k, v in state.items() if v.dim() >= 1)
    state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
    save_weights(run / "best.safetensors", state, meta)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and name in err and len(err.strip().splitlines()) == 1


def test_fine_tune_unfreeze_names_backbone_stages_of_a_task_model():
    from cnnkit.engine.build import param_groups
    from cnnkit.transfer import frozen_stages

    config = load_config(
        None, ["task=segmentation", "model=deeplabv3", "backbone=resnet18", "transfer.strategy=fine_tune"]
    )
    model = build_model(config, ["a", "b"], 3)
    param_groups(config, model)
    assert frozen_stages(model) == [] and all(p.requires_grad for p in model.parameters())

    config.transfer.unfreeze = ["layer4"]
    groups = param_groups(config, model)
    assert "layer3" in frozen_stages(model) and "layer4" not in frozen_stages(model)
    assert all(p.requires_grad for p in model.classifier.parameters())
    # the head trains at the full rate, the backbone at backbone_lr_scale
    scales = {
        g["lr_scale"] for g in groups for p in g["params"] if p is model.backbone.layer4[0].conv1.weight
    }
    assert scales == {config.transfer.backbone_lr_scale}

    config.transfer.unfreeze = ["layer9"]
    with pytest.raises(ConfigError, match="unknown stage 'layer9'"):
        param_groups(config, model)


def test_weights_of_a_whole_task_model_initialise_every_layer(unet_run, tmp_path, capsys):
    """`weights=` a run's checkpoint starts a new run of the same model from all its layers (progressive
    resizing: train small, then go on at full size); another class count is a one-line error."""
    from safetensors.torch import load_file

    best = unet_run / "best.safetensors"
    config = load_config(None, ["task=segmentation", "model=unet", "model_kwargs.base_channels=8"])
    model = build_model(config, [str(d) for d in range(10)], 1, str(best))
    for name, value in load_file(str(best)).items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ConfigError, match=re.escape(f"weights in {best} do not fit UNet") + ".*head.weight"):
        build_model(config, ["a", "b"], 1, str(best))
    out = tmp_path / "next"
    assert main([*UNET_TRAIN, "data.image_size=96", f"weights={best}", f"output_dir={out}"]) == 0
    assert (out / "best.safetensors").is_file()
    assert main([*UNET_TRAIN, "data=shapes", f"weights={best}", f"output_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert "do not fit UNet" in err and len(err.strip().splitlines()) == 1


def test_classifier_weights_still_go_to_the_backbone(tmp_path):
    from safetensors.torch import save_file

    from cnnkit.models import create_model

    classifier = create_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18.safetensors"
    save_file(classifier.state_dict(), str(path))
    config = load_config(None, ["task=segmentation", "model=fcn", "backbone=resnet18"])
    model = build_model(config, ["a", "b"], 3, str(path))
    assert torch.equal(model.backbone.layer1[0].conv1.weight, classifier.layer1[0].conv1.weight)
