"""The R-CNN lineage measured side by side: R-CNN, Fast R-CNN, Faster R-CNN and a YOLO-style detector, from
their shipped recipes, on the same MNIST-Det splits (held-out val, 500 canvases of 128x128) and the same
backbone family (MobileNetV3-Large).

For each detector: the training time (each run timed end to end by `benchmarks/train_tasks.py`, or with
`--runs`, the sum of the epoch times in the run's `metrics.csv`, its pretraining's included); COCO
mAP@[.5:.95], @.5 and @.75 on the whole held-out split (`cnnkit.evaluate`); and inference seconds per image,
one image at a time, split with forward hooks into proposals (selective search without a cache / the RPN),
backbone (every backbone pass; the FPN or neck included) and heads (the rest: warping, RoI pooling, fully
connected layers, SVMs, decoding and NMS). The selective-search proposals themselves are reported for both
modes: recall at IoU 0.5 and 0.7, proposals per image and seconds per image. Prints Markdown tables and
writes a chart.

    python benchmarks/rcnn_lineage.py [--runs DIR] [--images 100] [--chart docs/images/rcnn_lineage.png]

`--runs DIR` reads already-trained runs `DIR/<recipe>` (what `train_tasks.py --keep DIR` leaves) instead of
training the four recipes.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import pathlib
import tempfile
import time
from collections import defaultdict

import torch

RECIPES = ["rcnn", "fast_rcnn", "faster_rcnn", "yolo"]
PARTS = {"proposals": ("proposals", "rpn"), "backbone": ("backbone", "neck")}
"""The submodules whose forward time counts as each part; the rest of the model's time is its heads."""


def _train_tasks():
    path = pathlib.Path(__file__).with_name("train_tasks.py")
    spec = importlib.util.spec_from_file_location("train_tasks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def epoch_seconds(run_dir: pathlib.Path) -> float:
    """Sum of the epochs' times of a run and of its pretraining (``pretrain/``), from ``metrics.csv``."""
    total = 0.0
    for path in (run_dir / "metrics.csv", run_dir / "pretrain" / "metrics.csv"):
        if path.is_file():
            with path.open() as f:
                total += sum(float(row["time"]) for row in csv.DictReader(f))
    return total


class PartTimer:
    """Forward hooks that add up the wall time of named submodules of a model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.handles = []
        for part, names in PARTS.items():
            for name in names:
                module = getattr(model, name, None)
                if isinstance(module, torch.nn.Module):
                    self._hook(module, part)

    def _hook(self, module: torch.nn.Module, part: str) -> None:
        starts: list[float] = []
        self.handles.append(module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter())))

        def done(*_):
            self.seconds[part] += time.perf_counter() - starts.pop()

        self.handles.append(module.register_forward_hook(done))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def inference_split(predictor, images: list[torch.Tensor]) -> dict[str, float]:
    """Seconds per image of proposals, backbone and heads (one image per call, after one warm-up call)."""
    proposals = getattr(predictor.model, "proposals", None)
    if proposals is not None:  # time the search itself, not the cache
        proposals.cache, proposals.workers = None, 1
    predictor.predict(images[:1], conf=0.01)
    timer = PartTimer(predictor.model)
    start = time.perf_counter()
    for image in images:
        predictor.predict([image], conf=0.01)
    total = (time.perf_counter() - start) / len(images)
    timer.remove()
    split = {part: timer.seconds[part] / len(images) for part in PARTS}
    split["heads"] = total - sum(split.values())
    split["total"] = total
    return split


def proposal_table(images: list[torch.Tensor], boxes: list[torch.Tensor], scale: float) -> list[dict]:
    """Selective search in both modes on ``images``: recall at IoU 0.5 / 0.7, proposals and s per image."""
    from cnnkit.tasks.detection.proposals import SelectiveSearch, proposal_recall

    rows = []
    for mode in ("fast", "quality"):
        search = SelectiveSearch(mode=mode, scale=scale, cache=False, workers=1)
        start = time.perf_counter()
        found = [search(image[None])[0] for image in images]
        seconds = (time.perf_counter() - start) / len(images)
        recall = proposal_recall(found, boxes, (0.5, 0.7))
        count = sum(len(f) for f in found) / len(found)
        rows.append(
            {"mode": mode, "recall50": recall[0.5], "recall70": recall[0.7], "per_image": count, "s": seconds}
        )
    return rows


def chart(rows: list[dict], path: pathlib.Path) -> None:
    """mAP bars and stacked inference-time bars per detector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["recipe"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.27
    for i, (key, label) in enumerate((("map", "mAP@[.5:.95]"), ("map50", "mAP@.5"), ("map75", "mAP@.75"))):
        left.bar([x + (i - 1) * width for x in range(len(rows))], [r[key] for r in rows], width, label=label)
    left.set_xticks(range(len(rows)), names)
    left.set_ylim(0, 1.15)  # room above the bars for the legend
    left.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    left.set_title("held-out MNIST-Det (500 canvases)")
    left.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)
    bottom = [0.0] * len(rows)
    for part in ("proposals", "backbone", "heads"):
        values = [max(r["split"][part], 0.0) * 1000 for r in rows]
        right.bar(names, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    # a linear axis: on a log axis the stacked segments' heights would not be proportional to their times
    for x, total in enumerate(bottom):
        right.annotate(f"{total:.0f} ms", (x, total), ha="center", va="bottom", fontsize=8)
    right.set_ylim(0, max(bottom) * 1.12)
    right.set_ylabel("ms per image")
    right.set_title("inference, one image at a time, 2 CPU cores")
    right.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=pathlib.Path, help="read trained runs DIR/<recipe> instead of training"
    )
    parser.add_argument("--images", type=int, default=100, help="held-out images timed one by one")
    parser.add_argument("--chart", type=pathlib.Path, default=pathlib.Path("docs/images/rcnn_lineage.png"))
    parser.add_argument(
        "--metrics-from-runs",
        action="store_true",
        help="with --runs: take the mAPs of each run's last epoch from its metrics.csv instead of evaluating again",
    )
    args = parser.parse_args()

    import cnnkit
    from cnnkit.data import MNISTDetection
    from cnnkit.data.sources import GENERATED_SEEDS, GENERATED_SIZES

    os.environ.setdefault("CNNKIT_CACHE_DIR", tempfile.mkdtemp(prefix="lineage-cache-"))
    runs, train_seconds = args.runs, {}
    if runs is None:
        runs = pathlib.Path(tempfile.mkdtemp(prefix="lineage-runs-"))
        train_tasks = _train_tasks()
        for name in RECIPES:
            train_seconds[name] = train_tasks.run_recipe(name, [], runs)["seconds"]
    val = MNISTDetection("val", size=GENERATED_SIZES["val"], image_size=128, seed=GENERATED_SEEDS["val"])
    timed = [val[i][0] for i in range(args.images)]

    rows = []
    for name in RECIPES:
        run_dir = runs / name
        predictor = cnnkit.load(run_dir)
        if args.metrics_from_runs:
            with (run_dir / "metrics.csv").open() as f:
                metrics = {k: float(v) for k, v in list(csv.DictReader(f))[-1].items() if v}
        else:
            metrics = cnnkit.evaluate(predictor)
        rows.append(
            {
                "recipe": name,
                "train_s": train_seconds.get(name, epoch_seconds(run_dir)),
                "map": metrics["map"],
                "map50": metrics["map50"],
                "map75": metrics["map75"],
                "split": inference_split(predictor, timed),
            }
        )

    source = "end to end" if train_seconds else "sum of epoch times"
    print(
        f"| detector | training min ({source}) | mAP@[.5:.95] | mAP@.5 | mAP@.75 | proposals ms | backbone ms | heads ms | total ms/image |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        s = {k: v * 1000 for k, v in r["split"].items()}
        print(
            f"| {r['recipe']} | {r['train_s'] / 60:.1f} | {r['map']:.3f} | {r['map50']:.3f} | {r['map75']:.3f} | "
            f"{s['proposals']:.1f} | {s['backbone']:.1f} | {s['heads']:.1f} | {s['total']:.1f} |"
        )
    by = {r["recipe"]: r["split"] for r in rows}
    rcnn_net = by["rcnn"]["backbone"] + by["rcnn"]["heads"]
    fast_net = by["fast_rcnn"]["backbone"] + by["fast_rcnn"]["heads"]
    print(
        f"\nR-CNN / Fast R-CNN, backbone + heads: {rcnn_net / fast_net:.1f}x; "
        f"Fast R-CNN (selective search included) / Faster R-CNN, end to end: "
        f"{by['fast_rcnn']['total'] / by['faster_rcnn']['total']:.1f}x"
    )

    settings = cnnkit.load(runs / "fast_rcnn").model.proposals
    boxes = [val[i][1]["boxes"] for i in range(args.images)]
    print(f"\nselective search on {args.images} held-out canvases (scale {settings.scale}):\n")
    print("| mode | recall@0.5 | recall@0.7 | proposals / image | s / image |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for p in proposal_table(timed, boxes, settings.scale):
        print(
            f"| {p['mode']} | {p['recall50']:.3f} | {p['recall70']:.3f} | {p['per_image']:.1f} | {p['s']:.3f} |"
        )
    chart(rows, args.chart)
    print(f"\nchart: {args.chart}")


if __name__ == "__main__":
    main()
