"""Trainer overhead: time per step of :class:`cnnkit.engine.Trainer` over a minimal hand-written loop.

Same model (LeNet-5), data (MNIST-5k train split, in memory), batch size, optimizer, schedule and number of
steps; the Trainer runs with its standard callbacks (checkpoint every epoch, CSV log, progress lines), the
hand loop with none. Runs alternate hand/Trainer so machine noise hits both; the figure is the median of the
per-round ratios ``trainer / hand`` (goal: <= 1.05).

    python benchmarks/trainer_overhead.py [--rounds 5] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the cnnkit command sets it (see cnnkit.cli)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit.data import MNIST5k  # noqa: E402
from cnnkit.data.loader import BatchLoader  # noqa: E402
from cnnkit.data.sampler import EpochSampler  # noqa: E402
from cnnkit.engine.callbacks import CheckpointCallback, CSVLogger, ProgressCallback  # noqa: E402
from cnnkit.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from cnnkit.engine.trainer import Trainer  # noqa: E402
from cnnkit.tasks.classification import ClassificationTask  # noqa: E402

MEAN, STD = (0.1307,), (0.3081,)


def hand_loop(data: MNIST5k, epochs: int, batch: int) -> float:
    torch.manual_seed(0)
    model = cnnkit.create_model("lenet5")
    opt = build_optimizer(model, "adamw", 3e-3, 5e-4)
    steps = epochs * (len(data) // batch)
    sched = build_scheduler(opt, steps, "onecycle")
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
        for b in range(len(data) // batch):
            idx = order[b * batch : (b + 1) * batch]
            x = (data.images[idx].float() / 255 - mean) / std
            loss = F.cross_entropy(model(x), data.labels[idx], label_smoothing=0.1)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
    return (time.perf_counter() - start) / steps


def trainer_loop(data: MNIST5k, epochs: int, batch: int) -> float:
    torch.manual_seed(0)
    model = cnnkit.create_model("lenet5")
    opt = build_optimizer(model, "adamw", 3e-3, 5e-4)
    loader = BatchLoader(data, EpochSampler(len(data), batch, drop_last=True))
    steps = epochs * len(loader)
    sched = build_scheduler(opt, steps, "onecycle")
    task = ClassificationTask(10, MEAN, STD, label_smoothing=0.1)
    with tempfile.TemporaryDirectory() as run:
        callbacks = [
            CheckpointCallback(run),
            CSVLogger(f"{run}/metrics.csv"),
            ProgressCallback(print_fn=lambda line: None, force_plain=True),
        ]
        trainer = Trainer(
            model, task, loader, None, opt, sched, epochs=epochs, device="cpu", callbacks=callbacks
        )
        start = time.perf_counter()
        trainer.fit()
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    data = MNIST5k("train")
    print(
        f"LeNet-5, MNIST-5k train ({len(data)}), batch {args.batch}, {args.epochs} epochs, threads {torch.get_num_threads()}"
    )
    hand_loop(data, 1, args.batch)  # warm-up
    ratios, hands, trainers = [], [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            h, t = hand_loop(data, args.epochs, args.batch), trainer_loop(data, args.epochs, args.batch)
        else:
            t, h = trainer_loop(data, args.epochs, args.batch), hand_loop(data, args.epochs, args.batch)
        hands.append(h)
        trainers.append(t)
        ratios.append(t / h)
        print(f"round {r + 1}: hand {h * 1e3:.2f} ms/step, trainer {t * 1e3:.2f} ms/step, ratio {t / h:.3f}")
    print(
        f"median: hand {statistics.median(hands) * 1e3:.2f} ms/step, trainer {statistics.median(trainers) * 1e3:.2f} "
        f"ms/step, ratio {statistics.median(ratios):.3f} (goal <= 1.05)"
    )


if __name__ == "__main__":
    main()
