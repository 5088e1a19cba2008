"""``cnnkit models [PATTERN] [--json]``: the registered models with parameters, MACs and input size."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cnnkit.errors import ConfigError, did_you_mean


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit models``."""
    parser = subparsers.add_parser(
        "models",
        help="list registered models with params / MACs / input size",
        description="Registered models and their cards: parameters, MACs at the default input, input size.",
    )
    parser.add_argument(
        "pattern",
        nargs="?",
        default="*",
        metavar="PATTERN",
        help="shell-style pattern such as 'resnet*'; without * ? [ it matches as a substring",
    )
    parser.add_argument(
        "--task",
        metavar="TASK",
        help="only the models of this task (classification, detection, segmentation...)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list of model cards")
    parser.set_defaults(func=run)


def model_rows(pattern: str = "*", task: str | None = None) -> list[dict[str, Any]]:
    """Card data of the registered models matching ``pattern`` (of ``task``, if given), in registration order.

    Args:
        pattern: shell-style pattern; one without ``*``, ``?`` or ``[`` matches as a substring.
        task: a registered task name.

    Returns:
        One dict per model: ``name, task, family, params, macs, input_size, min_input_size, num_classes,
        torchvision, paper`` (``params`` / ``macs`` are ``None`` for task models, whose size depends on
        their backbone).

    Raises:
        ConfigError: an unknown task, or no registered model matches.
    """
    from cnnkit.tasks import get_task, list_models, model_card

    if task is not None:
        get_task(task)
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    names = list_models(glob, task=task)
    if not names:
        where = f" among the {task} models" if task else ""
        raise ConfigError(
            f"no registered model matches {pattern!r}{where}{did_you_mean(pattern, list_models(task=task))}"
        )
    rows = []
    for name in names:
        card = model_card(name)
        rows.append(
            {
                "name": name,
                "task": card.task,
                "family": card.family,
                "params": card.params,
                "macs": card.macs,
                "input_size": list(card.input_size),
                "min_input_size": list(card.min_input_size),
                "num_classes": card.num_classes,
                "torchvision": card.torchvision,
                "paper": card.paper,
            }
        )
    return rows


def format_gmacs(macs: int) -> str:
    """MACs in G: three decimals from 1 M MACs on, six below (LeNet-5's 416,520 -> ``"0.000417"``)."""
    return f"{macs / 1e9:.3f}" if macs >= 1_000_000 else f"{macs / 1e9:.6f}"


def run(args: argparse.Namespace) -> int:
    """Print the table of models (or the JSON list)."""
    rows = model_rows(args.pattern, args.task)
    if args.json:
        print(json.dumps(rows))
        return 0
    from rich.table import Table

    from cnnkit.cli import console

    table = Table(title=f"{len(rows)} registered model{'s' if len(rows) != 1 else ''}")
    table.add_column("Model")
    table.add_column("Task")
    table.add_column("Family")
    table.add_column("Params", justify="right")
    table.add_column("MACs (G)", justify="right")
    table.add_column("Input")
    for row in rows:
        size = "x".join(map(str, row["input_size"]))
        params = "backbone" if row["params"] is None else f"{row['params']:,}"
        macs = "backbone" if row["macs"] is None else format_gmacs(row["macs"])
        table.add_row(row["name"], row["task"], row["family"], params, macs, size)
    console().print(table)
    return 0
