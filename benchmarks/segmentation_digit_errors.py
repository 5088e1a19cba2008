"""Where a semantic model's MNIST-Seg error is: per digit, on training and held-out canvases.

Run: ``python benchmarks/segmentation_digit_errors.py RUN_DIR [--images N]``

For each digit of the first ``N`` canvases of the training split (seed 0) and of the held-out split (seed 1)
of MNIST-Seg, the digit's class is the majority of the predicted classes over its own mask pixels. The
script prints the share of digits whose majority class is right, by digit height, the most frequent
confusions, and how consistent each digit's pixels are (the share of its pixels in the majority class). A
training accuracy well above the held-out one says the model overfits; both low says it has not learnt the
digits yet. ``RUN_DIR`` is a ``cnnkit train task=segmentation data=mnist-seg`` run (its best checkpoint).
"""

from __future__ import annotations

import argparse
import collections

import torch

from cnnkit.data import MNISTSegmentation
from cnnkit.data.sources import GENERATED_SEEDS
from cnnkit.engine.inference import load_run_model
from cnnkit.tasks.images import channel_stats, normalize_images


def digit_votes(model: torch.nn.Module, dataset: MNISTSegmentation, mean, std, batch: int = 50):
    """Yield ``(true digit, majority predicted digit, share of its pixels in that class, height)`` per digit."""
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        images = normalize_images(torch.stack([image for image, _ in items]), mean, std)
        with torch.no_grad():
            predicted = model(images).argmax(1)
        for (_, target), pred in zip(items, predicted):
            for label, mask, box in zip(target["labels"], target["masks"], target["boxes"]):
                pixels = pred[mask.bool()]
                if len(pixels) == 0:
                    continue
                votes = torch.bincount(pixels, minlength=len(dataset.classes) + 1)  # background is 0
                yield (
                    int(label),
                    int(votes.argmax()) - 1,
                    votes.max().item() / len(pixels),
                    int(box[3] - box[1]),
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="run directory or checkpoint of a semantic MNIST-Seg model")
    parser.add_argument("--images", type=int, default=300, help="canvases per split")
    args = parser.parse_args()
    model, meta, config = load_run_model(args.run)
    mean, std = channel_stats(meta["input"]["mean"]), channel_stats(meta["input"]["std"])
    size = config.data.image_size or 128
    for split, seed in GENERATED_SEEDS.items():
        dataset = MNISTSegmentation(split, size=args.images, image_size=size, seed=seed)
        rows = list(digit_votes(model, dataset, mean, std))
        right = [true == pred for true, pred, _, _ in rows]
        by_height = collections.defaultdict(list)
        for (_, _, _, height), ok in zip(rows, right):
            by_height[min(height // 10 * 10, 40)].append(ok)
        heights = ", ".join(
            f"{h}-{h + 9 if h < 40 else ''} px {sum(v) / len(v):.2f} ({len(v)})"
            for h, v in sorted(by_height.items())
        )
        confusions = collections.Counter((t, p) for t, p, _, _ in rows if t != p).most_common(6)
        shares = torch.tensor([share for _, _, share, _ in rows])
        print(
            f"{split}: {sum(right)}/{len(rows)} digits right ({sum(right) / len(rows):.3f}); by height: {heights}"
        )
        print(f"  most frequent (true, predicted): {confusions}")
        print(
            f"  pixels in the majority class: mean {shares.mean():.3f}, digits under 90%: {(shares < 0.9).float().mean():.3f}"
        )


if __name__ == "__main__":
    main()
