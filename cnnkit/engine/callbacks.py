"""Standard trainer callbacks: checkpoints, progress, CSV log, early stopping, plots."""

from __future__ import annotations

import csv
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from cnnkit import transfer
from cnnkit.engine.checkpoint import BackgroundWriter, save_checkpoint, save_weights
from cnnkit.engine.trainer import Callback, Trainer
from cnnkit.errors import ConfigError


def metric_is_better(name: str, value: float, best: float | None) -> bool:
    """Whether ``value`` improves on ``best``; metrics named ``*loss*`` are minimised, others maximised."""
    if best is None:
        return True
    return value < best if "loss" in name else value > best


class CheckpointCallback(Callback):
    """Save ``last`` after every epoch (and on Ctrl-C), ``best`` when the chosen metric improves.

    Saves are written by a :class:`~cnnkit.engine.checkpoint.BackgroundWriter` from copies taken at the
    event, so training goes on while the disk works; the run waits for them when it ends. A NaN/inf loss
    saves nothing, so ``last`` stays the last good checkpoint.

    Args:
        run_dir: the run directory.
        metric: validation metric that selects ``best`` (``accuracy``, ``loss``, ``map50``, ``miou``...).
        extra_metadata: JSON-serialisable data stored with every checkpoint (e.g. the resolved config).
    """

    def __init__(
        self, run_dir: pathlib.Path, metric: str = "accuracy", extra_metadata: dict[str, Any] | None = None
    ):
        self.run_dir = pathlib.Path(run_dir)
        self.metric = metric
        self.extra = extra_metadata or {}
        self.best: float | None = None
        self.writer = BackgroundWriter()

    def _meta(self, trainer: Trainer) -> dict[str, Any]:
        return {**self.extra, **trainer.position(), "best_metric": self.metric, "best_value": self.best}

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.history and self.metric in trainer.history[-1]:
            values = [row[self.metric] for row in trainer.history if self.metric in row]
            for v in values:
                if metric_is_better(self.metric, v, self.best):
                    self.best = v

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.metric)
        if trainer.is_main and value is not None and metric_is_better(self.metric, value, self.best):
            self.best = value
            meta = {**self._meta(trainer), "epoch": trainer.epoch + 1, "batch_in_epoch": 0}
            weights, _ = self.writer.snapshot(trainer.eval_model)
            self.writer.submit(lambda: save_weights(self.run_dir / "best.safetensors", weights, meta))

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.is_main:
            weights, state = self.writer.snapshot(trainer._unwrapped(), trainer.state_dict())
            meta = self._meta(trainer)
            self.writer.submit(lambda: save_checkpoint(self.run_dir, weights, state, meta))

    def on_fit_end(self, trainer: Trainer) -> None:
        self.writer.wait()

    def on_nonfinite(self, trainer: Trainer) -> None:
        self.writer.wait()  # the last good checkpoint is complete on disk before the error surfaces

    def on_interrupt(self, trainer: Trainer) -> None:
        self.writer.wait()
        if trainer.is_main:
            save_checkpoint(self.run_dir, trainer._unwrapped(), trainer.state_dict(), self._meta(trainer))


class CSVLogger(Callback):
    """Append one row per epoch to ``metrics.csv`` (scalar metrics only)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        rows = trainer.history
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved for ``patience`` epochs."""

    def __init__(self, metric: str, patience: int) -> None:
        self.metric = metric
        self.patience = patience
        self.best: float | None = None
        self.bad_epochs = 0

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.metric)
        if value is None:
            return
        if metric_is_better(self.metric, value, self.best):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.should_stop = True


class ProgressCallback(Callback):
    """Rich progress bars (epoch and batch: loss, metric, throughput, ETA); plain lines when not a TTY.

    Args:
        metric: validation metric shown per epoch.
        print_fn: where plain lines go (default ``print`` to stdout).
        force_plain: plain lines even on a terminal.
    """

    def __init__(
        self, metric: str = "accuracy", print_fn: Callable[[str], None] = print, force_plain: bool = False
    ):
        self.metric = metric
        self.print = print_fn
        self.plain = force_plain or not sys.stdout.isatty()
        self.progress = None
        self._last_update = 0.0
        self._samples = 0
        self._start = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main or self.plain:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.progress.start()
        self.epoch_bar = self.progress.add_task(
            "epochs", total=trainer.epochs, completed=trainer.epoch, info=""
        )
        self.batch_bar = self.progress.add_task("batches", total=len(trainer.train_loader), info="")

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._start = time.perf_counter()
        self._samples = 0
        if self.progress is not None:
            self.progress.reset(
                self.batch_bar, total=len(trainer.train_loader), completed=trainer.batch_in_epoch
            )
            self.progress.update(self.batch_bar, description=f"epoch {trainer.epoch + 1}/{trainer.epochs}")

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        self._samples += trainer.train_loader.sampler.batch_size * trainer.accumulate
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self._last_update < 0.2:  # rendering every step would cost more than small steps do
            return
        self._last_update = now
        rate = self._samples / max(now - self._start, 1e-9)
        self.progress.update(
            self.batch_bar,
            completed=trainer.batch_in_epoch,
            info=f"loss {loss.item():.4f}  {rate:,.0f} img/s  lr {trainer.lr:.2e}",
        )

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        row = trainer.history[-1]
        metric = row.get(self.metric)
        shown = f"{self.metric} {metric:.4f}" if isinstance(metric, float) else ""
        rate = self._samples / max(trainer.epoch_time, 1e-9)
        text = f"epoch {row['epoch']}/{trainer.epochs}  train_loss {row['train_loss']:.4f}  {shown}  {rate:,.0f} img/s  {row['time']:.1f}s"
        if self.progress is not None:
            self.progress.update(self.batch_bar, completed=len(trainer.train_loader))
            self.progress.update(self.epoch_bar, completed=trainer.epoch, info=shown)
            self.progress.console.print(text)
        else:
            self.print(text)

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_fit_end(self, trainer: Trainer) -> None:
        self._stop()

    def on_interrupt(self, trainer: Trainer) -> None:
        self._stop()

    def on_nonfinite(self, trainer: Trainer) -> None:
        self._stop()


class ProgressiveUnfreezing(Callback):
    """Unfreeze one more stage, top to bottom, every ``every`` epochs (Howard & Ruder, 2018).

    At epoch ``e`` the ``e // every`` highest frozen backbone stages (as frozen at the start of training)
    are trainable; the schedule depends only on the epoch, so resumed runs follow it too.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ConfigError(f"progressive unfreezing needs every >= 1, got {every}")
        self.every = every
        self.initially_frozen: list[str] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.initially_frozen is None:
            frozen = set(transfer.frozen_stages(trainer.model))
            self.initially_frozen = [s for s in reversed(transfer.stage_names(trainer.model)) if s in frozen]

    def on_epoch_start(self, trainer: Trainer) -> None:
        count = min(trainer.epoch // self.every, len(self.initially_frozen or []))
        if count:
            transfer.unfreeze(trainer.model, self.initially_frozen[:count])


class CloseAugment(Callback):
    """From epoch ``start`` (0-based) on, train without the named transforms of the task's augmentation,
    e.g. the last epochs without :class:`~cnnkit.augment.Mosaic` (``close_mosaic``), so that a detector ends
    on images like those it will see (YOLOX, Ge et al. 2021, Sec. 2.2; YOLOv8's ``close_mosaic``). The
    choice depends only on the epoch, so a resumed run follows it too.

    Args:
        start: the first epoch without them.
        names: class names of the transforms to leave out.
    """

    def __init__(self, start: int, names: tuple[str, ...]) -> None:
        self.start = start
        self.names = names
        self.full: Any = None
        self.closed: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from cnnkit.augment.base import without_transforms

        self.full = trainer.task.augment
        self.closed = without_transforms(self.full, self.names)

    def on_epoch_start(self, trainer: Trainer) -> None:
        trainer.task.augment = self.closed if trainer.epoch >= self.start else self.full

    def on_fit_end(self, trainer: Trainer) -> None:
        trainer.task.augment = self.full


class PlotsCallback(Callback):
    """Write a run's plots when it ends: ``curves.png`` (losses and the chosen metric per epoch), the
    task's metric plots (:meth:`~cnnkit.tasks.base.Task.plot_metrics`: confusion matrix, PR curves) and
    ``predictions.png`` (:meth:`~cnnkit.tasks.base.Task.plot_predictions` on the validation data).

    Args:
        run_dir: where the PNGs go.
        metric: the metric plotted beside the losses.
    """

    def __init__(self, run_dir: pathlib.Path, metric: str) -> None:
        self.run_dir = pathlib.Path(run_dir)
        self.metric = metric

    def on_fit_end(self, trainer: Trainer) -> None:
        if not trainer.is_main or not trainer.history:
            return
        from cnnkit.tasks import plots

        plots.plot_curves(trainer.history, self.run_dir / "curves.png", self.metric)
        trainer.task.plot_metrics(trainer.metrics, self.run_dir)
        draw_predictions(trainer, self.run_dir / "predictions.png")


def draw_predictions(trainer: Trainer, path: pathlib.Path) -> bool:
    """Write the task's picture of the evaluated model's predictions on validation samples
    (:meth:`~cnnkit.tasks.base.Task.plot_predictions`) to ``path``; the model's train/eval mode is restored.

    Returns:
        ``False`` when there is no validation data to draw.
    """
    val_data = getattr(trainer.val_loader, "dataset", None)
    if val_data is None or not len(val_data):
        return False
    model = trainer.eval_model
    was_training = model.training
    try:
        trainer.task.plot_predictions(model.eval(), val_data, trainer.device, path)
    finally:
        model.train(was_training)
    return True
