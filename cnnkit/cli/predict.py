"""``cnnkit predict CHECKPOINT IMAGE... [--json]``: classes, boxes or masks for images, with a trained model.

Classification prints the top-k classes of each image. Detection prints each image's boxes and writes the
image with its boxes drawn (and instance masks, for Mask R-CNN); segmentation writes a colour overlay of the
predicted mask. Pictures go to ``--output`` (default ``predict/`` beside the checkpoint), one PNG per image.
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
    parser.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (classification; default 5)")
    parser.add_argument(
        "--conf", type=float, default=0.25, help="lowest detection score kept (detection; default 0.25)"
    )
    parser.add_argument(
        "--output", metavar="DIR", help="where drawn images go (default: predict/ beside the run)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per image (or JSON)."""
    from cnnkit.engine.inference import load
    from cnnkit.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    predictor = load(args.checkpoint)
    output = pathlib.Path(args.output) if args.output else predictor.checkpoint.parent / "predict"
    results = predictor.predict(args.images, topk=args.topk, conf=args.conf, output=output)
    if args.json:
        print(json.dumps(results))
        return 0
    print("\n".join(describe(r) for r in results))
    return 0


def describe(result: dict) -> str:
    """One line for a prediction: the top classes, the objects found, or the classes' share of pixels."""
    arrow = f" -> {result['output']}" if "output" in result else ""
    if "topk" in result:
        found = ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["topk"])
        return f"{result['image']}: {found}{arrow}"
    if "detections" in result:
        found = ", ".join(f"{d['label']} {d['score']:.2f} {d['box']}" for d in result["detections"])
        return f"{result['image']}: {len(result['detections'])} objects{': ' + found if found else ''}{arrow}"
    found = ", ".join(f"{name} {frac:.1%}" for name, frac in result["classes"].items())
    return f"{result['image']}: {found or 'background only'}{arrow}"
