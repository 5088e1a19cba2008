"""Images/s of trained detectors through ``cnnkit.load(RUN).predict``, pre- and post-processing included, on
the held-out MNIST-Det canvases (issue #23's inference target: >= 100 at batch 1 and >= 230 at batch 32 on
one thread, the peer's 95 / 229 on the same machine type).

    python benchmarks/detector_speed.py RUN [RUN ...] [--batch 1 32] [--threads 1] [--images 320] [--rounds 3]

Each run is a trained run directory (e.g. kept by ``python benchmarks/train_tasks.py yolo --keep DIR``), so
post-processing sees the boxes a trained model keeps (random weights keep almost none). The images are the
first ``--images`` of the benchmark's held-out MNIST-Det (128x128, seed 1), decoded uint8 tensors (reading
files is left out); ``predict`` letterboxes, normalises, runs the model, decodes, applies NMS at the default
score threshold (0.25) and maps boxes to the original pixels. A run's figure is its best of ``--rounds``
passes over the images; the runs are timed in interleaved rounds in one process.
"""

from __future__ import annotations

import argparse
import time

import torch

import cnnkit
from cnnkit.data import MNISTDetection
from cnnkit.data.sources import GENERATED_SEEDS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="trained detection run directories")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = MNISTDetection("val", size=args.images, image_size=128, seed=GENERATED_SEEDS["val"])
    images = [data[i][0] for i in range(len(data))]
    predictors = {run: cnnkit.load(run, device="cpu") for run in args.runs}
    best = {(run, b): float("inf") for run in args.runs for b in args.batch}
    kept = {}
    for _ in range(args.rounds):
        for batch in args.batch:
            for run, predictor in predictors.items():
                predictor.predict(images[:batch], batch_size=batch)  # warm-up at this batch size
                start = time.perf_counter()
                results = predictor.predict(images, batch_size=batch)
                best[run, batch] = min(best[run, batch], time.perf_counter() - start)
                kept[run] = sum(len(r["detections"]) for r in results) / len(results)
    print(f"{len(images)} held-out MNIST-Det images 128x128, {args.threads} thread(s), best of {args.rounds}")
    print("| run | model | " + " | ".join(f"img/s batch {b}" for b in args.batch) + " | boxes kept / image |")
    print("| --- | --- |" + " --- |" * len(args.batch) + " --- |")
    for run, predictor in predictors.items():
        speeds = " | ".join(f"{len(images) / best[run, b]:.0f}" for b in args.batch)
        print(f"| {run} | {predictor.config.model} | {speeds} | {kept[run]:.2f} |")


if __name__ == "__main__":
    main()
