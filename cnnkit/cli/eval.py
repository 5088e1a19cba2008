"""``cnnkit eval RUN_DIR|CHECKPOINT [--json] [--output DIR]``: metrics of a trained model on its validation split."""

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
    parser.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="where detection PR-curve PNGs go (default: eval/ beside the checkpoint)",
    )
    parser.set_defaults(func=run)


def evaluate_checkpoint(path: str) -> dict:
    """The metrics of :func:`cnnkit.engine.run.evaluate`, plus ``task``."""
    from cnnkit.engine.run import evaluate

    metrics, _, config = evaluate(path)
    metrics["task"] = config.task
    return metrics


def run(args: argparse.Namespace) -> int:
    """Print the metrics table (or JSON); write PR curves for detection."""
    from cnnkit.engine.run import resolve_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint)
    if "pr_curves" in metrics:
        from cnnkit.tasks.detection.metrics import plot_pr_curves

        out = (
            pathlib.Path(args.output) if args.output else resolve_checkpoint(args.checkpoint).parent / "eval"
        )
        metrics["pr_curves_png"] = str(plot_pr_curves(metrics, out / "pr_curves.png"))
        if "mask_pr_curves" in metrics:
            masks = {k[len("mask_") :]: v for k, v in metrics.items() if k.startswith("mask_")}
            metrics["mask_pr_curves_png"] = str(plot_pr_curves(masks, out / "mask_pr_curves.png"))
    if args.json:
        print(json.dumps(metrics))
        return 0
    from cnnkit.cli import console

    if "map" in metrics:
        table = _detection_table
    elif "miou" in metrics:
        table = _segmentation_table
    else:
        table = _classification_table
    rich_table, summary = table(args.checkpoint, metrics)
    console().print(rich_table)
    print(summary)
    for key in ("pr_curves_png", "mask_pr_curves_png"):
        if key in metrics:
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
