"""``cnnkit export CHECKPOINT|MODEL --format onnx|torchscript``: a fused model file, checked against PyTorch.

The target is a ``cnnkit train`` run directory or ``.safetensors`` checkpoint (anything containing a path
separator or ending in ``.safetensors`` is taken as a path), or else a registered model name (random
initialisation, or ``--weights FILE``). The eval model is fused (:func:`cnnkit.export.fuse`), exported,
and the written file is run (onnxruntime / ``torch.jit.load``) on a standard-normal sample and compared
with the unfused PyTorch model by :func:`cnnkit.export.check_export`: the relative error
``max |file - PyTorch| / max |PyTorch|`` is printed with the tolerance, and past ``TOLERANCE`` the command
fails with exit code 1. A model whose outputs are all zero on the sample cannot be checked (any file
would match): that is one line on stderr and exit code 2, like other bad input; the file stays written.

An ONNX file exported from a run carries in its metadata what inference needs (task, classes, input size and
normalisation, post-processing options, config, cnnkit version:
:func:`cnnkit.engine.inference.export_metadata`), so that ``cnnkit predict model.onnx IMAGE`` and
``cnnkit.load("model.onnx")`` need nothing else. A model whose card says it cannot be exported (two-stage
detectors) is refused in one line.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any

import torch
from torch import nn

from cnnkit.errors import ConfigError, DataError
from cnnkit.export.formats import RELATIVE_TOLERANCE

TOLERANCE = RELATIVE_TOLERANCE
"""Largest accepted relative error between the exported file and PyTorch (measurements: the source)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit export``."""
    from cnnkit.export.formats import DEFAULT_OPSET, FORMATS

    parser = subparsers.add_parser(
        "export",
        help="fused ONNX / TorchScript file, checked against PyTorch",
        description=(
            "Fold BatchNorms into convolutions, export to ONNX or TorchScript, run the file "
            f"(onnxruntime / torch.jit) on a sample and check it against PyTorch (fails past {TOLERANCE:g})."
        ),
    )
    parser.add_argument(
        "target", metavar="CHECKPOINT|MODEL", help="run directory or .safetensors checkpoint, or a model name"
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="file format")
    parser.add_argument("--output", metavar="FILE", help="file to write (default: <name>.onnx or <name>.pt)")
    parser.add_argument(
        "--dynamic-batch", action="store_true", help="symbolic batch dimension (checked at batch 1 and 3)"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, metavar="N", help="ONNX opset (default %(default)s)"
    )
    parser.add_argument(
        "--input", metavar="CxHxW", help="input size (default: the checkpoint's or the model card's)"
    )
    parser.add_argument("--weights", metavar="FILE", help="weights file for a model name (.pth/.safetensors)")
    parser.set_defaults(func=run)


def is_checkpoint_path(target: str) -> bool:
    """Whether a target names a checkpoint or run directory rather than a registered model."""
    return (
        os.sep in target or "/" in target or target.endswith(".safetensors") or pathlib.Path(target).exists()
    )


def load_export_target(
    target: str, weights: str | None, input_size: tuple[int, int, int] | None
) -> tuple[nn.Module, str, tuple[int, int, int], dict[str, Any] | None]:
    """The eval model a target names, a file stem for it, the ``(C, H, W)`` input to export at, and the
    checkpoint's metadata (``None`` for a model name).

    Raises:
        DataError: a missing checkpoint, or one not written by ``cnnkit train``.
        ConfigError: an unknown model name, ``--weights`` with a checkpoint, or an input below the
            model's minimum size.
    """
    from cnnkit.export.formats import check_exportable
    from cnnkit.tasks import create_model, model_card

    meta = None
    if is_checkpoint_path(target):
        from cnnkit.engine.build import task_class
        from cnnkit.engine.inference import load_run_model

        if weights is not None:
            raise ConfigError("--weights goes with a model name; a checkpoint already holds its weights")
        model, meta, config = load_run_model(target)
        check_exportable(model_card(config.model))
        stem = pathlib.Path(target).resolve().name.removesuffix(".safetensors")
        size = input_size or (meta["input"]["channels"], meta["input"]["size"], meta["input"]["size"])
        card = model_card(task_class(config).weights_card(config) or config.model)
    else:
        card = model_card(target)
        check_exportable(card)
        size = input_size or card.input_size
        kwargs = {"in_chans": size[0]} if size[0] != card.input_size[0] else {}
        model, stem = create_model(target, weights=weights, **kwargs).eval(), target
    _, min_h, min_w = card.min_input_size
    if size[1] < min_h or size[2] < min_w:
        raise ConfigError(
            f"{card.name} needs an input of at least {min_h}x{min_w} pixels, got {size[1]}x{size[2]}"
        )
    return model, stem, size, meta


def run_metadata(meta: dict[str, Any], size: tuple[int, int, int], outputs: Any) -> dict[str, str] | None:
    """The ONNX metadata of a run's file exported at ``size`` (``None`` when ``--input`` asked for an input
    the run's pre-processing cannot produce: another channel count or a non-square size)."""
    from cnnkit.engine.inference import export_metadata, output_structure

    channels, height, width = size
    if channels != meta["input"]["channels"] or height != width:
        return None
    return export_metadata({**meta, "input": {**meta["input"], "size": height}}, output_structure(outputs))


def run(args: argparse.Namespace) -> int:
    """Export, check, print the file and the relative error; exit 1 past :data:`TOLERANCE`.

    Raises:
        ConfigError: (besides bad options) the model's outputs are all zero on the sample, so the file
            cannot be checked (:func:`cnnkit.export.check_export`).
    """
    from cnnkit.cli.summary import parse_input_size
    from cnnkit.export import check_export, export_onnx, export_torchscript, fuse
    from cnnkit.export.formats import SUFFIXES

    input_size = parse_input_size(args.input) if args.input is not None else None
    model, stem, size, meta = load_export_target(args.target, args.weights, input_size)
    output = pathlib.Path(args.output or f"{stem}{SUFFIXES[args.format]}")
    if not output.parent.is_dir():
        raise DataError(f"--output folder not found: {output.parent}")
    generator = torch.Generator().manual_seed(0)
    batches = (1, 3) if args.dynamic_batch else (1,)
    samples = [torch.randn(n, *size, generator=generator) for n in batches]
    try:
        with torch.no_grad():
            outputs = model(samples[0])
    except RuntimeError as err:  # e.g. a fixed-size head fed another size: the user's input
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{stem} cannot run on a {'x'.join(map(str, size))} input: {first_line}") from None
    fused = fuse(model)
    if args.format == "onnx":
        metadata = run_metadata(meta, size, outputs) if meta is not None else None
        export_onnx(
            fused, output, samples[0], opset=args.opset, dynamic_batch=args.dynamic_batch, metadata=metadata
        )
    else:
        export_torchscript(fused, output, samples[0])
    batch = "dynamic" if args.dynamic_batch else 1
    print(f"wrote {output} ({args.format}, input {'x'.join(map(str, size))}, batch {batch})")
    error = check_export(output, model, samples)
    print(
        f"relative error vs PyTorch: {error:.3g} (max |file - PyTorch| / max |PyTorch|, batch "
        f"{', '.join(map(str, batches))}; tolerance {TOLERANCE:g})"
    )
    if not error <= TOLERANCE:
        print(
            f"cnnkit export: error: {output} differs from the PyTorch model: relative error {error:.3g} > "
            f"{TOLERANCE:g}",
            file=sys.stderr,
        )
        return 1
    return 0
