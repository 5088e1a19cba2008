"""The soft Dice loss without a one-hot target, against the one-hot form it replaced, in one run.

Run:

    python benchmarks/segmentation_loss.py [--batch 16] [--classes 11] [--size 128] [--threads 2] [--rounds 5]

``cnnkit.tasks.segmentation.losses.dice_loss`` takes the per-class sums of the Dice formula,
``sum_i g_ic`` (a class count, ``bincount``) and ``sum_i p_ic g_ic`` (each pixel's true-class probability,
``gather`` then ``scatter_add``), without the ``(N, K, H, W)`` one-hot target. This script times, in
interleaved rounds (the machine's speed drifts):

- the loss alone, forward + backward, on NHWC logits (as a channels_last model gives them): the one-hot form
  (the implementation before, written out here as the baseline), ours, and cross-entropy for scale;
- one training step of the ``unetplusplus`` recipe's model (MobileNetV3-Large, five deep-supervision heads,
  CE + Dice on each) with either Dice, random weights, where the loss runs five times per step.

It prints median milliseconds and the ratios baseline / ours, and checks that both forms give the same loss.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cnnkit import create_model
from cnnkit.engine.trainer import to_channels_last
from cnnkit.tasks.segmentation.losses import cross_entropy, dice_loss


def one_hot_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The baseline: the one-hot form of :func:`dice_loss` (every pixel counted), as it was implemented."""
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)
    intersection = (probs * onehot).sum((0, 2, 3))
    cardinality = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2.0 * intersection + smooth) / (cardinality + smooth)).mean()


def timed(step: Callable[[], None], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls, after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, args.size, args.size)
    logits = to_channels_last(torch.randn(shape, generator=generator)).requires_grad_(True)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=generator)
    gap = (dice_loss(logits, target) - one_hot_dice(logits, target)).abs().item()
    print(f"|ours - one-hot| on one batch: {gap:.1e}")

    torch.manual_seed(0)
    model = create_model(
        "unetplusplus",
        num_classes=args.classes,
        in_chans=1,
        backbone="mobilenet_v3_large",
        decoder_channels=[8, 8, 16, 24, 48, 96],
        deep_supervision=True,
        score_stages=[3, 2, 1],
    ).train()
    model = model.to(memory_format=torch.channels_last)
    images = to_channels_last(torch.randn(args.batch, 1, args.size, args.size, generator=generator))

    def loss_step(dice: Callable) -> Callable[[], None]:
        return lambda: dice(logits, target).backward()

    def train_step(dice: Callable) -> Callable[[], None]:
        def step() -> None:
            heads = model(images)
            loss = sum(cross_entropy(h, target) + dice(h, target) for h in heads) / len(heads)
            model.zero_grad(set_to_none=True)
            loss.backward()

        return step

    cases = {
        "loss: Dice, one-hot (baseline)": (loss_step(one_hot_dice), 5),
        "loss: Dice, ours": (loss_step(dice_loss), 5),
        "loss: cross-entropy": (loss_step(cross_entropy), 5),
        "U-Net++ step, one-hot Dice (baseline)": (train_step(one_hot_dice), 2),
        "U-Net++ step, ours": (train_step(dice_loss), 2),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (step, repeats) in cases.items():
            times[name] += timed(step, repeats)
    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(f"\n{shape} NHWC logits, {args.threads} threads, {args.rounds} interleaved rounds, median ms")
    print("| case | ms |")
    print("| --- | ---: |")
    for name, ms in median.items():
        print(f"| {name} | {ms:.1f} |")
    print(
        f"one-hot / ours: loss {median['loss: Dice, one-hot (baseline)'] / median['loss: Dice, ours']:.2f}x, "
        f"U-Net++ training step {median['U-Net++ step, one-hot Dice (baseline)'] / median['U-Net++ step, ours']:.2f}x"
    )


if __name__ == "__main__":
    main()
