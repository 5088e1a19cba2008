"""``cnnkit recipes [--json]``: the shipped training recipes with their task, model, data and measured metric."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit recipes``."""
    parser = subparsers.add_parser(
        "recipes",
        help="list the shipped training recipes (cnnkit train recipe=NAME)",
        description=(
            "The shipped recipes: tuned settings, each with what it measured. `cnnkit train recipe=NAME "
            "[key=value ...]` starts from one; a run naming a recipe's model and data starts from it too."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.set_defaults(func=run)


def recipe_rows() -> list[dict]:
    """One dict per shipped recipe: ``name, task, model, data, metric, value, target, minutes, machine,
    command, description``."""
    from cnnkit.engine.recipes import list_recipes
    from cnnkit.tasks import resolve_task

    rows = []
    for recipe in list_recipes():
        task = recipe.task or resolve_task(None, recipe.model)[0].name
        measured = recipe.measured
        rows.append(
            {
                "name": recipe.name,
                "task": task,
                "model": recipe.model,
                "data": recipe.data,
                **{
                    key: measured.get(key)
                    for key in ("metric", "value", "target", "minutes", "machine", "command")
                },
                "description": recipe.description,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    """Print the table of recipes (or the JSON list)."""
    rows = recipe_rows()
    if args.json:
        print(json.dumps(rows))
        return 0
    from rich.table import Table

    from cnnkit.cli import console

    table = Table(title=f"{len(rows)} shipped recipes (cnnkit train recipe=NAME)")
    for column in ("Recipe", "Task", "Model", "Data", "Measured", "Target", "Minutes", "Machine"):
        table.add_column(column, justify="right" if column in ("Target", "Minutes") else "left")
    for row in rows:
        measured = f"{row['metric']} {row['value']:.3f}" if row["value"] is not None else "-"
        target = f">= {row['target']:g}" if row["target"] is not None else "-"
        minutes = f"{row['minutes']:.1f}" if row["minutes"] is not None else "-"
        machine = row["machine"] or "-"
        table.add_row(row["name"], row["task"], row["model"], row["data"], measured, target, minutes, machine)
    console().print(table)
    print(
        "measured by `python benchmarks/train_tasks.py NAME` (end to end, pretraining included); compare "
        "minutes on one machine type: the AMD EPYC (AVX2) one took 1-2x the Intel Xeon (AVX-512) one's"
    )
    return 0
