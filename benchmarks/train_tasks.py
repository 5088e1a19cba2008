"""Detection and segmentation targets: train each recipe with `cnnkit train` and check its held-out metric.

Each recipe is a `cnnkit train` command (the generated MNIST-Det / MNIST-Seg sets: train split seed 0 from
MNIST-5k's training digits, held-out val split seed 1 from its test digits). The script runs it in a fresh
temporary directory, times it end to end (start-up included), reads the last epoch's metric from the run's
`metrics.csv`, and compares with the target (issues: detection and segmentation; budget
15 minutes on 2 CPU cores each).

    python benchmarks/train_tasks.py [RECIPE ...] [--list] [--keep DIR] [-- extra key=value overrides]
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

TWO_STAGE = (
    "model_kwargs.out_indices=[-3,-2,-1] model_kwargs.fpn_channels=64 model_kwargs.anchor_sizes=[[16],[32],[64],[128]] "
    "model_kwargs.rpn_pre_nms_top_n=[600,300] model_kwargs.rpn_post_nms_top_n=[300,100] "
    "model_kwargs.representation_size=256 model_kwargs.box_batch_size_per_image=128 model_kwargs.sampling_ratio=1"
)
"""The small Faster R-CNN / Mask R-CNN settings for 128x128 MNIST-Det (see cnnkit.tasks.detection.faster_rcnn)."""

PRETRAIN = "task=classification model=mobilenet_v3_large data=mnist5k epochs=8 channels_last=true output_dir=pretrain"
"""Encoder pretraining on MNIST-5k's training digits (the same digits MNIST-Seg's training canvases use): on
MNIST-Seg the U-Net finds the digits' pixels early (background IoU 0.999) and spends its budget learning
which digit they are; a classifier learns that faster, and ``weights=`` hands it on with its normalisation."""

FINE_TUNE = (
    "data.batch_size=16 task_kwargs.loss=ce+dice channels_last=true weights=pretrain/best.safetensors "
    "transfer.strategy=fine_tune transfer.backbone_lr_scale=0.2"
)
"""The semantic models' common settings: CE + Dice, NHWC (about 1.6x faster on the CPU), the pretrained
encoder fine-tuned at a fifth of the learning rate (at the full rate its digit knowledge was mostly lost:
mIoU 0.447 after 2 epochs, against 0.695 at 0.2x)."""

UNET_FINE_TUNE = FINE_TUNE.replace("backbone_lr_scale=0.2", "backbone_lr_scale=1.0")
"""The U-Net's pretrained encoder at the full learning rate: with FCN-style score fusion on its decoder
(``score_stages``) the digit classes are learnt early, and the encoder may then move further than the
semantic models' 0.2x lets it (held-out mIoU 0.852 after 5 epochs at 128x128, against 0.841 at 0.5x and
0.828 at 0.2x without score fusion)."""

UNET = "task=segmentation model=unet backbone=mobilenet_v3_large data=mnist-seg model_kwargs.score_stages=[3,2,1]"
"""The U-Net of the recipe, trained in two sizes (progressive resizing, as fast.ai's DAWNBench ImageNet runs
and EfficientNetV2's progressive learning, Tan and Le, 2021): 12 epochs on 64x64 canvases, then 3 on the
128x128 ones from that run's whole checkpoint (``weights=coarse/last.safetensors``) at a third of the
learning rate. The digits keep their size in pixels on the small canvases, so each of its steps shows
about as many digits for a quarter of the pixels: what the U-Net is short of on MNIST-Seg is which digit a
stroke belongs to, not where its edges are (held-out mIoU 0.908 in 13.1 min end to end, against 0.852
after 5 epochs at 128x128 only and 0.876 after 10, which would take about 17 min)."""

MASK_STAGE = (
    TWO_STAGE.replace("out_indices=[-3,-2,-1]", "out_indices=[-4,-3,-2,-1]")
    .replace("anchor_sizes=[[16],[32],[64],[128]]", "anchor_sizes=[[16],[32],[64],[128],[256]]")
    .replace("box_batch_size_per_image=128", "box_batch_size_per_image=64")
)
"""Mask R-CNN adds the stride-4 map to the pyramid: MNIST's strokes are 2 to 5 pixels wide, and RoIs of
digit size are pooled from the finest level, which was stride 8 (mask mAP@.5 0.784 against box 0.937
after 3 epochs). Half the RoI samples per image pay for it."""

RECIPES: dict[str, dict] = {
    # name: the `cnnkit train` steps run in order (all timed), the metric and its target
    "yolo": {
        "steps": [
            "task=detection model=yolo backbone=mobilenet_v3_large data=mnist-det epochs=8 data.batch_size=32 "
            "model_kwargs.fpn_channels=64 model_kwargs.aspect_ratios=[1.0]".split()
        ],
        "metric": "map50",
        "target": 0.90,
    },
    "faster_rcnn": {
        "steps": [
            f"task=detection model=faster_rcnn backbone=mobilenet_v3_large data=mnist-det epochs=3 data.batch_size=16 "
            f"{TWO_STAGE}".split()
        ],
        "metric": "map50",
        "target": 0.85,
    },
    "unet": {
        "steps": [
            PRETRAIN.split(),
            f"{UNET} data.image_size=64 epochs=12 {UNET_FINE_TUNE} output_dir=coarse".split(),
            f"{UNET} epochs=3 optim.lr=0.001 {UNET_FINE_TUNE.replace('pretrain/best', 'coarse/last')}".split(),
        ],
        "metric": "miou",
        "target": 0.90,
    },
    "deeplabv3": {
        "steps": [
            PRETRAIN.split(),
            f"task=segmentation model=deeplabv3 backbone=mobilenet_v3_large data=mnist-seg epochs=4 "
            f"model_kwargs.output_stride=16 model_kwargs.aspp_channels=128 {FINE_TUNE}".split(),
        ],
        "metric": "miou",
        "target": 0.85,
    },
    "deeplabv3plus": {
        "steps": [
            PRETRAIN.split(),
            f"task=segmentation model=deeplabv3plus backbone=mobilenet_v3_large data=mnist-seg epochs=4 "
            f"model_kwargs.aspp_channels=64 {FINE_TUNE}".split(),
        ],
        "metric": "miou",
        "target": 0.85,
    },
    "mask_rcnn": {
        "steps": [
            f"task=segmentation model=mask_rcnn backbone=mobilenet_v3_large data=mnist-seg epochs=3 data.batch_size=16 "
            f"{MASK_STAGE} model_kwargs.mask_channels=64 model_kwargs.mask_layers=2 task_kwargs.max_detections=10".split()
        ],
        "metric": "mask_map50",
        "target": 0.80,
    },
}
BUDGET_S = 15 * 60


def run_recipe(name: str, extra: list[str], keep: pathlib.Path | None) -> dict:
    """Train one recipe (all its steps); return its metric, target, wall time and verdict."""
    recipe = RECIPES[name]
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        for i, step in enumerate(recipe["steps"]):
            last = i == len(recipe["steps"]) - 1
            args = [*step, "progress=false", *([f"output_dir={name}", *extra] if last else [])]
            out = subprocess.run(
                [sys.executable, "-m", "cnnkit", "train", *args], cwd=cwd, capture_output=True, text=True
            )
            if out.returncode != 0:
                raise SystemExit(f"{name}: cnnkit train {' '.join(args)} failed:\n{out.stderr[-2000:]}")
        wall = time.perf_counter() - start
        run_dir = pathlib.Path(cwd) / name
        history = _read_metrics(run_dir / "metrics.csv")
        if keep is not None:
            shutil.copytree(run_dir, keep / name, dirs_exist_ok=True)
    final = history[-1][recipe["metric"]]
    ok = final >= recipe["target"] and wall <= BUDGET_S
    return {
        "recipe": name,
        "metric": recipe["metric"],
        "value": final,
        "target": recipe["target"],
        "seconds": wall,
        "ok": ok,
    }


def _read_metrics(path: pathlib.Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` (one per epoch) as numbers."""
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", nargs="*", help=f"default: all of {', '.join(RECIPES)}")
    parser.add_argument("--list", action="store_true", help="print the recipes' commands and exit")
    parser.add_argument("--keep", type=pathlib.Path, help="copy each run directory here")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run"
    )
    args = parser.parse_args()
    names = args.recipes or list(RECIPES)
    for name in names:
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    if args.list:
        for name in names:
            for step in RECIPES[name]["steps"]:
                print(f"{name}: cnnkit train {' '.join(step)}")
        return
    for name in names:
        r = run_recipe(name, args.set, args.keep)
        verdict = "ok" if r["ok"] else "MISSED"
        print(
            f"{r['recipe']:12s} {r['metric']} {r['value']:.4f} (target >= {r['target']:.2f}) "
            f"in {r['seconds'] / 60:.1f} min (budget 15): {verdict}",
            flush=True,
        )


if __name__ == "__main__":
    main()
