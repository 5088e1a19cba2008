"""How well can logits predicted at output stride s, upsampled bilinearly, draw MNIST-Seg's masks at all?

Run: ``python benchmarks/segmentation_stride_ceiling.py [--data mnist-seg|shapes] [--images N] [--strides 16 8 4 2]
[--steps S] [--like RUN]``

DeepLabV3 (and FCN) predict ``K`` logits per cell of a grid at output stride ``s`` and upsample them bilinearly
to the image (``F.interpolate(..., mode="bilinear", align_corners=False)``, as torchvision does). Whatever the
network, its prediction is then ``argmax_k upsample(L)_k`` for some coarse logit map ``L (K, H/s, W/s)``. This
script estimates the best mIoU such a prediction can reach: for each held-out image it fits ``L`` directly to
the true mask (Adam on the pixel cross-entropy, no network, one free logit map per image), takes the argmax of
the upsampled fit, and scores it over the set with the metrics of :mod:`cnnkit.tasks.segmentation`. A trained
model whose logits are upsampled from stride ``s`` cannot do much better than this ceiling (the fit minimises
cross-entropy, not mIoU itself, so the figure is an estimate, not a proof; a model above it would show that).

The set is the first ``--images`` (default 200, about 13 minutes on 2 cores for the four strides) of the
benchmark's held-out MNIST-Seg (500 images, 128x128, seed 1; ``benchmarks/train_tasks.py``), or with
``--data shapes`` of the generated shapes set at 128x128 (filled circles, squares and triangles 26-58 px
wide, the set on which DeepLabV3's output strides are measured).

``--like RUN`` fits the coarse logits to a trained run's full-resolution predictions instead of the truth and
scores the fit against the truth: what is left of that model's mIoU once its answer has to pass through
logits at stride ``s``. A stride-``s`` model that reaches a figure above this one would have to classify the
pixels better than ``RUN`` does, so with the best full-resolution model as ``RUN`` it is a practical ceiling
(again an estimate: the fit follows ``RUN``'s errors too).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cnnkit.data import MNISTSegmentation, Shapes
from cnnkit.data.sources import GENERATED_SEEDS
from cnnkit.engine.inference import load_run_model
from cnnkit.tasks.images import channel_stats, normalize_images
from cnnkit.tasks.segmentation import confusion_matrix, miou, pixel_accuracy

SETS = {"mnist-seg": MNISTSegmentation, "shapes": Shapes}
"""The generated sets with masks, by their ``data=`` names."""


def fitted_prediction(masks: torch.Tensor, stride: int, steps: int, num_classes: int) -> torch.Tensor:
    """Argmax of the bilinearly upsampled coarse logits fitted to ``masks`` (one free logit map per image).

    Shape:
        - Input: ``masks (N, H, W)`` int64 class indices; ``H`` and ``W`` multiples of ``stride``
        - Output: ``(N, H, W)`` predicted classes
    """
    n, height, width = masks.shape
    coarse = torch.zeros(n, num_classes, height // stride, width // stride, requires_grad=True)
    optimizer = torch.optim.Adam([coarse], lr=0.3)
    for _ in range(steps):
        logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return logits.argmax(1)


@torch.no_grad()
def run_prediction(run: str, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """The classes a trained segmentation run predicts, at full resolution.

    Shape:
        - Input: ``images (N, C, H, W)`` uint8, as the dataset gives them
        - Output: ``(N, H, W)`` int64
    """
    model, meta, _ = load_run_model(run)
    mean, std = channel_stats(meta["input"]["mean"]), channel_stats(meta["input"]["std"])
    model.eval()
    return torch.cat([model(normalize_images(chunk, mean, std)).argmax(1) for chunk in images.split(batch)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=sorted(SETS), default="mnist-seg", help="the generated set")
    parser.add_argument("--images", type=int, default=200, help="held-out images scored (of 500)")
    parser.add_argument("--strides", type=int, nargs="+", default=[16, 8, 4, 2])
    parser.add_argument("--steps", type=int, default=400, help="Adam steps of each fit")
    parser.add_argument("--chunk", type=int, default=100, help="images fitted at once")
    parser.add_argument(
        "--like", metavar="RUN", help="fit to this trained run's predictions instead of the truth"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    kind = SETS[args.data]
    dataset = kind("val", size=args.images, image_size=128, seed=GENERATED_SEEDS["val"])
    masks = torch.stack([dataset[i][1]["mask"] for i in range(len(dataset))])
    num_classes = len(kind.classes) + 1  # and the background
    print(f"held-out {args.data}: {len(masks)} images 128x128, {num_classes} classes")
    targets, fitted_to = masks, "the truth"
    if args.like:
        targets = run_prediction(args.like, torch.stack([dataset[i][0] for i in range(len(dataset))]))
        matrix = confusion_matrix(targets, masks, num_classes)
        fitted_to = "the run's predictions"
        print(
            f"{args.like} at full resolution: mIoU {miou(matrix):.3f}, pixel accuracy {pixel_accuracy(matrix):.4f}"
        )
    for stride in args.strides:
        start = time.perf_counter()
        matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        for chunk, truth in zip(targets.split(args.chunk), masks.split(args.chunk)):
            pred = fitted_prediction(chunk, stride, args.steps, num_classes)
            matrix += confusion_matrix(pred, truth, num_classes)
        print(
            f"output stride {stride:2d} ({128 // stride}x{128 // stride} logits) fitted to {fitted_to}: mIoU {miou(matrix):.3f}, "
            f"pixel accuracy {pixel_accuracy(matrix):.4f}  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
