"""``cnnkit predict RUN|CHECKPOINT|MODEL.onnx IMAGE... [--json] [--runtime onnxruntime]``: classes, boxes or
masks for images, with a trained model.

An ONNX file exported from a run (``cnnkit export RUN --format onnx``) runs with onnxruntime and the same pre-
and post-processing as the run (:class:`cnnkit.engine.inference.OnnxPredictor`). ``--runtime onnxruntime``
with a run exports it once to ``RUN/model.onnx`` (:func:`cnnkit.export.onnx_for_run`) and uses that file.

Classification prints the top-k classes of each image. Detection prints each image's boxes and writes the
image with its boxes drawn (and instance masks, for Mask R-CNN); segmentation writes a colour overlay of the
predicted mask (and, with ``--attention``, the attention gates' coefficient maps over the image in a second
PNG). Pictures go to ``--output`` (default ``predict/`` beside the checkpoint), one PNG per image.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="classify images, or draw detected boxes / segmentation masks, with a trained model",
        description=(
            "Classification: top-k classes per image (converted to the model's channels, resized on the shorter "
            "side and centre-cropped to the training size). Detection and segmentation: each image is "
            "letterboxed to the training size; boxes are printed in the original image's pixels and drawn, masks "
            "are overlaid; pictures are written to --output."
        ),
    )
    parser.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT|MODEL.onnx")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (classification; default 5)")
    parser.add_argument(
        "--conf", type=float, default=0.25, help="lowest detection score kept (detection; default 0.25)"
    )
    parser.add_argument(
        "--output", metavar="DIR", help="where drawn images go (default: predict/ beside the run)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    parser.add_argument(
        "--attention",
        action="store_true",
        help="also write the attention gates' coefficient maps over each image as NAME_attention.png "
        "(models with gates, e.g. attention_unet)",
    )
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="run a run's model in PyTorch (default) or in onnxruntime, exported once to RUN/model.onnx "
        "(an .onnx file always runs in onnxruntime)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per image (or JSON)."""
    from cnnkit.engine.inference import load
    from cnnkit.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    target = args.checkpoint
    if args.runtime == "onnxruntime" and not str(target).endswith(".onnx"):
        from cnnkit.export import onnx_for_run

        target = onnx_for_run(target)
    predictor = load(target)
    output = pathlib.Path(args.output) if args.output else predictor.checkpoint.parent / "predict"
    results = predictor.predict(
        args.images, topk=args.topk, conf=args.conf, output=output, attention=args.attention
    )
    if args.json:
        print(json.dumps(results))
        return 0
    print("\n".join(describe(r) for r in results))
    return 0


def describe(result: dict) -> str:
    """One line for a prediction: the top classes, the objects found, or the classes' share of pixels."""
    arrow = "".join(f" -> {result[key]}" for key in ("output", "attention") if key in result)
    if "topk" in result:
        found = ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["topk"])
        return f"{result['image']}: {found}{arrow}"
    if "detections" in result:
        found = ", ".join(f"{d['label']} {d['score']:.2f} {d['box']}" for d in result["detections"])
        return f"{result['image']}: {len(result['detections'])} objects{': ' + found if found else ''}{arrow}"
    found = ", ".join(f"{name} {frac:.1%}" for name, frac in result["classes"].items())
    return f"{result['image']}: {found or 'background only'}{arrow}"
