"""Images/s of trained detectors through ``cnnkit.load(RUN).predict``, pre- and post-processing included, on
the held-out MNIST-Det canvases (issue #23's inference target: >= 100 at batch 1 and >= 230 at batch 32 on
one thread, the peer's 95 / 229 on the same machine type).

    python benchmarks/detector_speed.py RUN [RUN ...] [--baseline GRID_RUN] [--batch 1 32] [--threads 1]
        [--images 320] [--rounds 3]

Each run is a trained run directory (e.g. kept by ``python benchmarks/train_tasks.py yolo --keep DIR``), so
post-processing sees the boxes a trained model keeps (random weights keep almost none). The images are the
first ``--images`` of the benchmark's held-out MNIST-Det (128x128, seed 1), decoded uint8 tensors (reading
files is left out); ``predict`` letterboxes, normalises, runs the model, decodes, applies NMS at the default
score threshold (0.25) and maps boxes to the original pixels. A run's figure is its best of ``--rounds``
passes over the images; the runs are timed in interleaved rounds in one process.

Each run is loaded as ``cnnkit.load`` does by default (BatchNorms folded, channels_last); ``--paths`` adds the
same run loaded otherwise, timed in the same rounds: ``trained`` (``fuse=False, channels_last=False``: the
model as trained, what ``load`` ran before folding became the default), ``folded`` (``channels_last=False``)
and ``torchscript`` (the default model traced at batch 1 and frozen with ``torch.jit.freeze``: not a cnnkit
path, measured to show what the Python dispatch of the eager model costs). An ``.onnx`` file exported from a
run (``cnnkit export RUN --format onnx --dynamic-batch``) is timed through onnxruntime, as ``load`` runs it.

The issue's figures were measured on another machine type, so an absolute img/s here says little about them.
``--baseline`` times the run the issue measured beside the peer, a trained ``yolo_grid`` run (the grid YOLO,
then the ``yolo`` recipe), as the issue measured it (``fuse=False, channels_last=False``: ``load`` did not fold
then), in the same rounds, and prints every run's speed as a ratio over it next to the issue's ratios: the
peer's (95 / 87 at batch 1, 229 / 139 at batch 32) and the target's (100 / 87, 230 / 139).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import cnnkit
from cnnkit.data import MNISTDetection
from cnnkit.data.sources import GENERATED_SEEDS
from cnnkit.engine.inference import Predictor

PATHS = {
    "default": {},
    "trained": {"fuse": False, "channels_last": False},
    "folded": {"channels_last": False},
    "torchscript": {},
}
"""How ``--paths`` loads a run: ``cnnkit.load`` keywords (``torchscript`` then traces the default model)."""

ISSUE_FIGURES = {
    "grid yolo (baseline)": {1: 87, 32: 139},
    "peer YOLOv8n": {1: 95, 32: 229},
    "target": {1: 100, 32: 230},
}
"""Issue #23's img/s at batch 1 and 32 on one thread, all measured on one machine type: the ``yolo_grid`` run
(then the ``yolo`` recipe, loaded as trained), the peer and the target."""


def path_label(run: str, path: str) -> str:
    """How a timed run is named in the tables: its ``--paths`` entry, or onnxruntime for an ``.onnx`` file."""
    return "onnxruntime" if run.endswith(".onnx") else path


def loaded(run: str, path: str) -> Predictor:
    """``run`` loaded on the CPU as ``path`` (one of :data:`PATHS`) names."""
    predictor = cnnkit.load(run, device="cpu", **PATHS[path])
    if path == "torchscript":
        size, channels = predictor.input_size, predictor.channels
        example = torch.zeros(1, channels, size, size).contiguous(memory_format=torch.channels_last)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            predictor.model = torch.jit.freeze(torch.jit.trace(predictor.model, example, check_trace=False))
    return predictor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="trained detection run directories")
    parser.add_argument(
        "--baseline", help="a trained yolo_grid run, timed as trained, that the speeds are divided by"
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--paths", nargs="+", default=["default"], choices=list(PATHS), help="how each run is loaded"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = MNISTDetection("val", size=args.images, image_size=128, seed=GENERATED_SEEDS["val"])
    images = [data[i][0] for i in range(len(data))]
    predictors = {
        (run, path): loaded(run, path)
        for run in args.runs
        for path in (["default"] if run.endswith(".onnx") else args.paths)
    }
    if args.baseline:
        predictors[args.baseline, "trained"] = loaded(args.baseline, "trained")
    best = {(key, b): float("inf") for key in predictors for b in args.batch}
    kept = {}
    for _ in range(args.rounds):
        for batch in args.batch:
            for key, predictor in predictors.items():
                predictor.predict(images[:batch], batch_size=batch)  # warm-up at this batch size
                start = time.perf_counter()
                results = predictor.predict(images, batch_size=batch)
                best[key, batch] = min(best[key, batch], time.perf_counter() - start)
                kept[key] = sum(len(r["detections"]) for r in results) / len(results)
    print(f"{len(images)} held-out MNIST-Det images 128x128, {args.threads} thread(s), best of {args.rounds}")
    header = " | ".join(f"img/s batch {b}" for b in args.batch)
    print(f"| run | model | backbone | path | {header} | boxes kept / image |")
    print("| --- | --- | --- | --- |" + " --- |" * len(args.batch) + " --- |")
    for (run, path), predictor in predictors.items():
        speeds = " | ".join(f"{len(images) / best[(run, path), b]:.0f}" for b in args.batch)
        model, label = predictor.config.model, path_label(run, path)
        print(
            f"| {run} | {model} | {predictor.config.backbone} | {label} | {speeds} | {kept[run, path]:.2f} |"
        )
    if args.baseline:
        print_ratios(predictors, best, args.batch, (args.baseline, "trained"))


def print_ratios(
    predictors: dict[tuple[str, str], Predictor],
    best: dict[tuple[tuple[str, str], int], float],
    batches: list[int],
    baseline: tuple[str, str],
) -> None:
    """Each run's img/s over the baseline's, measured in the same rounds, under the issue's own ratios."""
    issue_batches = [b for b in batches if b in ISSUE_FIGURES["target"]]
    header = " | ".join(f"x baseline, batch {b}" for b in issue_batches)
    print(f"\nSpeed over the baseline {baseline[0]} (as trained), measured in the same rounds")
    print(f"| run | path | {header} |")
    print("| --- | --- |" + " ---: |" * len(issue_batches))
    base = ISSUE_FIGURES["grid yolo (baseline)"]
    for name, figures in ISSUE_FIGURES.items():
        ratios = " | ".join(f"{figures[b] / base[b]:.2f}" for b in issue_batches)
        print(f"| issue #23: {name} | (issue's machine) | {ratios} |")
    for key in predictors:
        if key == baseline:
            continue
        ratios = " | ".join(f"{best[baseline, b] / best[key, b]:.2f}" for b in issue_batches)
        print(f"| {key[0]} | {path_label(*key)} | {ratios} |")


if __name__ == "__main__":
    main()
