"""The ``cnnkit`` command.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` (which registers the
subcommand and sets ``func``) and is listed in ``SUBCOMMANDS``. Any :class:`cnnkit.CnnkitError` (or a
missing file) becomes one line on stderr and exit code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# OpenMP threads that spin while waiting burn the cores they share with other processes: on a busy
# 2-core machine one LeNet epoch took 39 s of CPU instead of 1.6 s. Sleeping waits cost little here. This
# must be set before torch loads its OpenMP runtime; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cnnkit.errors import CnnkitError

SUBCOMMANDS: tuple[str, ...] = (
    "models",
    "summary",
    "train",
    "recipes",
    "eval",
    "predict",
    "augment",
    "export",
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse already exits 2 on usage errors)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    from cnnkit import __version__

    parser = _Parser(prog="cnnkit", description="Convolutional networks: analyse, train, evaluate, export.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"cnnkit.cli.{name}").add_parser(subparsers)
    return parser


def console():
    """A rich console for tables: the terminal's width, or 160 columns when output is piped to a file.

    Rich assumes 80 columns off a terminal, which wraps layer names in ``cnnkit summary > file``.
    """
    from rich.console import Console

    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=160)


_TRAIN_OPTIONS = ("--resume", "--help", "-h")


def _dashed_overrides(args: list[str]) -> list[str]:
    """``cnnkit train --epochs 5 --optim.lr=0.1`` means ``epochs=5 optim.lr=0.1``: rewrite such options.

    ``--resume`` and ``--help`` stay options; an option without a value is left for argparse to reject.
    """
    out, i = [], 0
    while i < len(args):
        item = args[i]
        key, sep, value = item[2:].partition("=")
        if not item.startswith("--") or item.split("=")[0] in _TRAIN_OPTIONS or not key:
            out.append(item)
        elif sep:
            out.append(f"{key.replace('-', '_')}={value}")
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append(f"{key.replace('-', '_')}={args[i + 1]}")
            i += 1
        else:
            out.append(item)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 bad input)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        argv = ["train", *_dashed_overrides(argv[1:])]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CnnkitError as err:
        print(f"cnnkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"cnnkit {args.command}: error: {err.strerror}: {err.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cnnkit {args.command}: interrupted", file=sys.stderr)
        return 130
