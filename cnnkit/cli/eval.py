"""``cnnkit eval RUN_DIR|CHECKPOINT [--json]``: metrics of a trained model on its validation/test split."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained model on its validation/test split",
        description="Accuracy, top-5, per-class accuracy and confusion matrix of a run's best checkpoint.",
    )
    parser.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def evaluate_checkpoint(path: str) -> dict:
    """Rebuild the run's model and data from the checkpoint and evaluate it (CUDA when available)."""
    import torch

    from cnnkit.data.loader import BatchLoader
    from cnnkit.data.sampler import EpochSampler
    from cnnkit.engine.run import build_classification_data, load_run_model
    from cnnkit.tasks.classification import ClassificationTask

    model, meta, config = load_run_model(path)
    data = build_classification_data(config)
    task = ClassificationTask(len(meta["classes"]), meta["input"]["mean"], meta["input"]["std"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    evaluator = task.evaluator()
    loader = BatchLoader(data.val, EpochSampler(len(data.val), config.data.eval_batch_size, shuffle=False))
    with torch.no_grad():
        for batch in loader.epoch(0):
            images, labels = task.prepare(batch, train=False, device=device)
            evaluator.update(model(images), labels)
    metrics = evaluator.compute()
    metrics["classes"] = meta["classes"]
    return metrics


def run(args: argparse.Namespace) -> int:
    """Print the metrics table (or JSON)."""
    metrics = evaluate_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(metrics))
        return 0
    from rich.table import Table

    from cnnkit.cli import console

    table = Table(title=f"{args.checkpoint}: {metrics['samples']} samples")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("samples", justify="right")
    for name, acc, row in zip(metrics["classes"], metrics["per_class_accuracy"], metrics["confusion"]):
        table.add_row(name, f"{acc:.4f}", str(sum(row)))
    table.caption = (
        f"accuracy {metrics['accuracy']:.4f}   top-5 {metrics['top5']:.4f}   loss {metrics['loss']:.4f}"
    )
    console().print(table)
    return 0
