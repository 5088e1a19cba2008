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


def predict_images(checkpoint: str, paths: list[str], topk: int = 5) -> list[dict]:
    """Classification: ``[{"image": path, "topk": [{"label", "score"}, ...]}, ...]``, best first."""
    import torch

    from cnnkit.data import read_image
    from cnnkit.engine.datasets import image_mode, resize_center_crop
    from cnnkit.engine.run import load_run_model
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


def predict_dense(
    checkpoint: str, paths: list[str], output: str | None = None, conf: float = 0.25
) -> list[dict]:
    """Detection / segmentation: predict each image, write the drawn picture, return what was found.

    Returns:
        Per image ``{"image", "output"}`` plus ``"detections": [{"label", "score", "box": [x1, y1, x2, y2]}]``
        (boxes in the original image's pixels) or ``"classes": {name: fraction of pixels}``.
    """
    import torch
    import torch.nn.functional as F

    from cnnkit.data import read_image, write_png
    from cnnkit.engine import plots
    from cnnkit.engine.datasets import image_mode, letterbox
    from cnnkit.engine.run import is_instance_model, load_run_model, resolve_checkpoint
    from cnnkit.tasks.images import channel_stats, normalize_images

    model, meta, config = load_run_model(checkpoint)
    spec, classes = meta["input"], list(meta["classes"])
    out_dir = pathlib.Path(output) if output else resolve_checkpoint(checkpoint).parent / "predict"
    out_dir.mkdir(parents=True, exist_ok=True)
    mean, std = channel_stats(spec["mean"]), channel_stats(spec["std"])
    results = []
    for path in paths:
        image = read_image(path, mode=image_mode(spec["channels"]))
        boxed, info = letterbox(image, None, spec["size"])
        scale = float(info["scale"])
        height, width = image.shape[-2:]
        inner = (max(1, round(height * scale)), max(1, round(width * scale)))
        with torch.no_grad():
            outputs = model(normalize_images(boxed[None], mean, std))
        item: dict = {"image": path, "output": str(out_dir / f"{pathlib.Path(path).stem}.png")}
        if is_instance_model(config):
            det = model.postprocess(outputs, score_threshold=conf, image_size=tuple(boxed.shape[-2:]))[0]
            det["boxes"] = det["boxes"] / scale
            if "masks" in det:
                masks = det["masks"][:, : inner[0], : inner[1]].float()
                det["masks"] = F.interpolate(masks[:, None], size=(height, width), mode="bilinear")[:, 0]
            item["detections"] = [
                {"label": classes[c], "score": round(s, 4), "box": [round(v, 1) for v in b]}
                for c, s, b in zip(det["labels"].tolist(), det["scores"].tolist(), det["boxes"].tolist())
            ]
            drawn = plots.draw_detections(image, det, classes)
        else:
            mask = outputs.argmax(1)[0, : inner[0], : inner[1]]
            mask = F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
            counts = torch.bincount(mask.flatten(), minlength=len(classes) + 1)
            item["classes"] = {
                name: round(counts[k + 1].item() / mask.numel(), 4)
                for k, name in enumerate(classes)
                if counts[k + 1]
            }
            drawn = plots.overlay_mask(image, mask, len(classes) + 1)
        write_png(drawn, item["output"], overwrite=True)
        results.append(item)
    return results


def run(args: argparse.Namespace) -> int:
    """Print one line per image (or JSON)."""
    from cnnkit.engine.checkpoint import read_metadata
    from cnnkit.engine.run import resolve_checkpoint
    from cnnkit.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    task = read_metadata(resolve_checkpoint(args.checkpoint)).get("config", {}).get("task", "classification")
    if task == "classification":
        results = predict_images(args.checkpoint, args.images, args.topk)
        lines = [
            f"{r['image']}: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["topk"])
            for r in results
        ]
    else:
        results = predict_dense(args.checkpoint, args.images, args.output, args.conf)
        lines = []
        for r in results:
            if "detections" in r:
                found = ", ".join(f"{d['label']} {d['score']:.2f} {d['box']}" for d in r["detections"])
                lines.append(
                    f"{r['image']}: {len(r['detections'])} objects{': ' + found if found else ''} -> {r['output']}"
                )
            else:
                found = ", ".join(f"{name} {frac:.1%}" for name, frac in r["classes"].items())
                lines.append(f"{r['image']}: {found or 'background only'} -> {r['output']}")
    if args.json:
        print(json.dumps(results))
        return 0
    print("\n".join(lines))
    return 0
