"""``cnnkit predict CHECKPOINT IMAGE... [--topk K] [--json]``: top-k classes per image."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="classify images with a trained model",
        description=(
            "Top-k classes per image. Each image is converted to the model's channels, resized (shorter side) "
            "and centre-cropped to its training size, and normalized as in training."
        ),
    )
    parser.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    parser.set_defaults(func=run)


def predict_images(checkpoint: str, paths: list[str], topk: int = 5) -> list[dict]:
    """``[{"image": path, "topk": [{"label", "score"}, ...]}, ...]``, best first."""
    import torch

    from cnnkit.data import read_image
    from cnnkit.engine.run import image_mode, load_run_model, resize_center_crop
    from cnnkit.tasks.classification import ClassificationTask

    model, meta, _ = load_run_model(checkpoint)
    spec = meta["input"]
    classes = meta["classes"]
    task = ClassificationTask(len(classes), spec["mean"], spec["std"])
    images = [
        resize_center_crop(read_image(p, mode=image_mode(spec["channels"])), spec["size"]) for p in paths
    ]
    with torch.no_grad():
        probs = model(task.normalize(torch.stack(images))).softmax(1)
    k = min(topk, len(classes))
    scores, labels = probs.topk(k, dim=1)
    return [
        {
            "image": path,
            "topk": [{"label": classes[i], "score": round(s, 6)} for s, i in zip(sc.tolist(), lb.tolist())],
        }
        for path, sc, lb in zip(paths, scores, labels)
    ]


def run(args: argparse.Namespace) -> int:
    """Print one line per image (or JSON)."""
    from cnnkit.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    results = predict_images(args.checkpoint, args.images, args.topk)
    if args.json:
        print(json.dumps(results))
        return 0
    for item in results:
        ranked = ", ".join(f"{t['label']} {t['score']:.3f}" for t in item["topk"])
        print(f"{item['image']}: {ranked}")
    return 0
