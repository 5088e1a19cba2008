"""``cnnkit eval RUN_DIR|CHECKPOINT|MODEL.onnx [data=NAME] [--json] [--output DIR]``: metrics of a trained model
on its validation split (an ONNX file exported from a run runs in onnxruntime)."""

from __future__ import annotations

import argparse
import json
import pathlib


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained model on its validation/test split",
        description=(
            "Metrics of a run's best checkpoint on its validation split: accuracy, top-5 and per-class accuracy "
            "(classification); COCO mAP, per-class AP and precision-recall curves (detection, Mask R-CNN); "
            "mIoU, Dice and per-class IoU (segmentation)."
        ),
    )
    parser.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT|MODEL.onnx")
    parser.add_argument(
        "data",
        nargs="?",
        metavar="data=NAME",
        help="evaluate on another dataset of the run's task (e.g. data=coco:PATH; its val split)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="where detection PR-curve PNGs go (default: eval/ beside the checkpoint)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the metrics table (or JSON); write the task's metric plots (PR curves for detection)."""
    from cnnkit.engine.inference import evaluate, load
    from cnnkit.errors import ConfigError

    data = None
    if args.data is not None:
        key, sep, data = args.data.partition("=")
        if key != "data" or not sep or not data:
            raise ConfigError(f"expected data=NAME after the run, e.g. data=coco:PATH; got {args.data!r}")
    predictor = load(args.checkpoint)
    metrics = evaluate(predictor, data=data)
    out = pathlib.Path(args.output) if args.output else predictor.checkpoint.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    for path in predictor.task.plot_metrics(metrics, out):
        metrics[f"{path.stem}_png"] = str(path)
    if args.json:
        print(json.dumps(metrics))
        return 0
    from cnnkit.cli import console

    if "map" in metrics:
        table = _detection_table
    elif "miou" in metrics:
        table = _segmentation_table
    elif "confusion" in metrics:
        table = _classification_table
    else:
        table = _scalar_table
    rich_table, summary = table(args.checkpoint, metrics)
    console().print(rich_table)
    print(summary)
    for key in metrics:
        if key.endswith("_png"):
            print(metrics[key])
    return 0


def _classification_table(title: str, metrics: dict):
    from rich.table import Table

    table = Table(title=f"{title}: {metrics['samples']} samples")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("samples", justify="right")
    for name, acc, row in zip(metrics["classes"], metrics["per_class_accuracy"], metrics["confusion"]):
        table.add_row(name, f"{acc:.4f}", str(sum(row)))
    return (
        table,
        f"accuracy {metrics['accuracy']:.4f}   top-5 {metrics['top5']:.4f}   loss {metrics['loss']:.4f}",
    )


def _scalar_table(title: str, metrics: dict):
    """Any other task's metrics: one row per number."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for key, value in numbers.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table, "   ".join(f"{k} {v:.4f}" for k, v in numbers.items() if isinstance(v, float))


def _ap(value: float) -> str:
    return "-" if value < 0 else f"{value:.4f}"


def _detection_table(title: str, metrics: dict):
    from rich.table import Table

    masks = "mask_per_class" in metrics
    table = Table(title=f"{title}: {metrics['images']} images")
    table.add_column("class")
    for column in ("AP", "AP50", "AP75") + (("mask AP", "mask AP50") if masks else ()):
        table.add_column(column, justify="right")
    mask_rows = metrics.get("mask_per_class", [None] * len(metrics["per_class"]))
    for row, mask_row in zip(metrics["per_class"], mask_rows):
        cells = [row["name"], _ap(row["ap"]), _ap(row["ap50"]), _ap(row["ap75"])]
        if mask_row is not None:
            cells += [_ap(mask_row["ap"]), _ap(mask_row["ap50"])]
        table.add_row(*cells)
    caption = (
        f"mAP@[.5:.95] {_ap(metrics['map'])}   mAP@.5 {_ap(metrics['map50'])}   mAP@.75 {_ap(metrics['map75'])}   "
        f"small {_ap(metrics['map_small'])}   medium {_ap(metrics['map_medium'])}   large {_ap(metrics['map_large'])}"
    )
    if masks:
        caption += (
            f"\nmask mAP@[.5:.95] {_ap(metrics['mask_map'])}   mask mAP@.5 {_ap(metrics['mask_map50'])}"
        )
    return table, caption


def _segmentation_table(title: str, metrics: dict):
    from rich.table import Table

    table = Table(title=f"{title}: {metrics['samples']} images")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Dice", justify="right")
    names = ["background", *metrics["classes"]]
    for name, iou, dice in zip(names, metrics["per_class_iou"], metrics["per_class_dice"]):
        table.add_row(name, "-" if iou != iou else f"{iou:.4f}", "-" if dice != dice else f"{dice:.4f}")
    summary = f"mIoU {metrics['miou']:.4f}   Dice {metrics['dice']:.4f}   pixel accuracy {metrics['pixel_accuracy']:.4f}"
    return table, summary
