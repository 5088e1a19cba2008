"""Transfer-learning experiment: pretrain LeNet-5 on digits 0-4, transfer to digits 5-9 with few labels.

Source task: the 2,000 MNIST-5k training digits of classes 0-4. Target task: classes 5-9 with ``--shots``
labelled training digits per class, evaluated on the 500 MNIST-5k test digits of classes 5-9. Strategies
(the reference page's table, plus progressive unfreezing and a from-scratch baseline):

- ``scratch``: random initialisation, everything trained;
- ``full``: pretrained weights, everything trained at the same learning rate;
- ``fine_tune``: pretrained weights, everything trained, the backbone at a 10x smaller learning rate;
- ``feature_extractor``: pretrained convolutions frozen (BatchNorm statistics too), a new head trained;
- ``progressive``: starts as ``feature_extractor`` and unfreezes one stage, top to bottom, every 10 epochs.

Every strategy gets a fresh classifier, the same augmentation and the same number of steps; the table is
the mean and standard deviation of test accuracy over ``--seeds`` seeds.

    python benchmarks/transfer_mnist.py [--shots 10] [--seeds 3] [--epochs 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cnnkit
from cnnkit import transfer
from cnnkit.augment import RandomAffine
from cnnkit.data import MNIST5k
from cnnkit.data.loader import BatchLoader
from cnnkit.data.sampler import EpochSampler
from cnnkit.engine.callbacks import ProgressiveUnfreezing
from cnnkit.engine.optim import build_optimizer, build_scheduler
from cnnkit.engine.trainer import Trainer
from cnnkit.tasks.classification import ClassificationTask

MEAN, STD = (0.1307,), (0.3081,)
STRATEGIES = ("scratch", "full", "fine_tune", "feature_extractor", "progressive")


class Digits:
    """In-memory digits of some classes, relabelled 0..K-1 (the trainer's fast path)."""

    def __init__(self, split: str, classes: list[int], per_class: int | None = None, seed: int = 0) -> None:
        data = MNIST5k(split)
        keep = []
        g = torch.Generator().manual_seed(seed)
        for c in classes:
            idx = (data.labels == c).nonzero().flatten()
            if per_class is not None:
                idx = idx[torch.randperm(len(idx), generator=g)[:per_class]]
            keep.append(idx)
        index = torch.cat(keep)
        self.images = data.images[index]
        remap = torch.full((10,), -1, dtype=torch.int64)
        remap[torch.tensor(classes)] = torch.arange(len(classes))
        self.labels = remap[data.labels[index]]

    def __len__(self) -> int:
        return len(self.labels)


def fit(
    model, train: Digits, test: Digits, epochs: int, lr: float, groups=None, callbacks=(), seed: int = 0
) -> float:
    """Train with the default recipe's ingredients; returns the test accuracy."""
    augment = RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), interpolation="bilinear")
    task = ClassificationTask(5, MEAN, STD, augment=augment, label_smoothing=0.1)
    batch = min(64, len(train))
    loader = BatchLoader(train, EpochSampler(len(train), batch, seed=seed, drop_last=True))
    val = BatchLoader(test, EpochSampler(len(test), 500, shuffle=False))
    optimizer = build_optimizer(groups if groups is not None else model, "adamw", lr, 5e-4)
    scheduler = build_scheduler(optimizer, epochs * len(loader), "onecycle")
    trainer = Trainer(
        model,
        task,
        loader,
        val,
        optimizer,
        scheduler,
        epochs=epochs,
        device="cpu",
        callbacks=callbacks,
        seed=seed,
    )
    trainer.fit()
    return trainer.metrics["accuracy"]


def transfer_run(strategy: str, source: dict, train: Digits, test: Digits, epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = cnnkit.create_model("lenet5", num_classes=5)
    if strategy != "scratch":
        cnnkit.load_pretrained(model, source)
    model.reset_classifier(5)  # a new head for the new classes
    callbacks = []
    scale = 1.0
    if strategy == "feature_extractor":
        transfer.apply_strategy(model, "feature_extractor")
    elif strategy == "fine_tune":
        scale = 0.1
    elif strategy == "progressive":
        transfer.apply_strategy(model, "feature_extractor")
        callbacks.append(ProgressiveUnfreezing(every=10))
    groups = transfer.param_groups(model, 5e-4, backbone_lr_scale=scale)
    return fit(model, train, test, epochs, 3e-3, groups, callbacks, seed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shots", type=int, default=10, help="labelled training digits per target class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--source-epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    torch.manual_seed(0)
    source_model = cnnkit.create_model("lenet5", num_classes=5)
    source_acc = fit(
        source_model,
        Digits("train", [0, 1, 2, 3, 4]),
        Digits("test", [0, 1, 2, 3, 4]),
        args.source_epochs,
        3e-3,
    )
    source = {k: v.clone() for k, v in source_model.state_dict().items()}
    print(
        f"source task (digits 0-4, 2,000 images, {args.source_epochs} epochs): test accuracy {source_acc:.4f}"
    )
    test = Digits("test", [5, 6, 7, 8, 9])
    print(f"target task: digits 5-9, {args.shots} labels per class, {args.epochs} epochs, {args.seeds} seeds")
    print(f"| strategy | test accuracy (mean ± std over {args.seeds} seeds) |")
    print("| --- | --- |")
    for strategy in STRATEGIES:
        accs = []
        for seed in range(args.seeds):
            train = Digits("train", [5, 6, 7, 8, 9], per_class=args.shots, seed=seed)
            accs.append(transfer_run(strategy, source, train, test, args.epochs, seed))
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {strategy} | {statistics.mean(accs):.4f} ± {std:.4f} |")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
