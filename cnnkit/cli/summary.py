"""``cnnkit summary MODEL|SPEC [--input CxHxW] [--json]``: per-layer shapes, parameters, MACs, receptive field.

An argument containing ``->`` or ``(`` is an arrow-notation spec (built with :func:`cnnkit.build`, input
from its ``Input(...)``); anything else is a registered model name (input from its model card).
"""

from __future__ import annotations

import argparse
import json
import re

from torch import nn

from cnnkit.errors import ConfigError, SpecError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit summary``."""
    parser = subparsers.add_parser(
        "summary",
        help="per-layer table: output shape, params, MACs, receptive field, jump",
        description=(
            "Analyse a registered model or an arrow-notation spec such as "
            "'Input(32x32) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(120) -> FC(84) -> FC(10)': "
            "output shape, parameters, MACs, receptive field and jump of every layer, and the totals."
        ),
    )
    parser.add_argument(
        "target", metavar="MODEL|SPEC", help="model name (see `cnnkit models`) or a quoted spec"
    )
    parser.add_argument(
        "--input",
        metavar="CxHxW",
        help="input size, e.g. 3x224x224 (default: the model card's or the spec's)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def is_spec(target: str) -> bool:
    """Whether a command-line target is an arrow-notation spec rather than a model name."""
    return "->" in target or "(" in target


def parse_input_size(text: str) -> tuple[int, int, int]:
    """Read ``--input CxHxW`` (e.g. ``3x224x224``) into ``(C, H, W)``.

    Raises:
        SpecError: anything but three positive integers of at most 6 digits joined by ``x``.
    """
    match = re.fullmatch(r"([0-9]{1,6})[xX]([0-9]{1,6})[xX]([0-9]{1,6})", text.strip(), re.ASCII)
    if match is None or min(int(v) for v in match.groups()) < 1:
        raise SpecError(f"--input must be CxHxW with positive whole numbers, e.g. 3x224x224; got {text!r}")
    c, h, w = (int(v) for v in match.groups())
    return c, h, w


def load_target(
    target: str, input_size: tuple[int, int, int] | None
) -> tuple[nn.Module, tuple[int, int, int]]:
    """Build the model a ``summary`` target names, and the ``(C, H, W)`` input to analyse it at.

    Args:
        target: a spec (see :func:`is_spec`) or a registered model name.
        input_size: ``--input``, or ``None`` for the spec's ``Input(...)`` / the card's ``input_size``.

    Returns:
        The model and its input size.

    Raises:
        SpecError: a bad spec, as one line (the problem, the column and the token).
        ConfigError: an unknown model name (listing close names), or an input below the model's minimum.
    """
    from cnnkit.models.spec import SpecTokenError, build
    from cnnkit.tasks import create_model, model_card

    if is_spec(target):
        try:
            model = build(target, input_size=input_size)
        except SpecTokenError as err:
            raise SpecError(err.one_line()) from None
        return model, model.input_size
    card = model_card(target)
    size = input_size or card.input_size
    _, min_h, min_w = card.min_input_size
    if size[1] < min_h or size[2] < min_w:
        raise ConfigError(
            f"{target} needs an input of at least {min_h}x{min_w} pixels, got {size[1]}x{size[2]}"
        )
    kwargs = {"in_chans": size[0]} if size[0] != card.input_size[0] else {}
    return create_model(target, **kwargs), size


def run(args: argparse.Namespace) -> int:
    """Print the per-layer table and totals (or the report as JSON)."""
    from cnnkit.analysis import analyze

    model, (c, h, w) = load_target(
        args.target, parse_input_size(args.input) if args.input is not None else None
    )
    try:
        report = analyze(model, (1, c, h, w))
    except RuntimeError as err:  # e.g. a fixed-size head fed another size; the user's input, not a bug
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{args.target} cannot run on a {c}x{h}x{w} input: {first}") from None
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    from cnnkit.cli import console

    console().print(report.table(title=f"{args.target} at 1x{c}x{h}x{w}"))
    return 0
