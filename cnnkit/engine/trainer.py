"""The training loop: one readable loop, behaviour added by callbacks on named events.

Events, in order: ``on_fit_start``, then per epoch (after entering a new phase, if one starts there)
``on_epoch_start``, per optimizer step
``on_step_end``, ``on_validation_end`` (with the metrics), ``on_epoch_end``, and finally ``on_fit_end``;
``on_interrupt`` on Ctrl-C and ``on_nonfinite`` on a NaN/inf loss. Checkpointing, progress bars, CSV logs,
plots, early stopping and progressive unfreezing are callbacks (:mod:`cnnkit.engine.callbacks`).

Determinism: every random draw of a batch (augmentation) comes from a generator seeded with
``(seed, epoch, batch)``, the sample order of an epoch from ``(seed, epoch)``, and the global torch RNG (dropout,
stochastic depth) is saved in checkpoints, so a resumed run repeats an uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.tasks.base import Task


class NonFiniteLossError(CnnkitError):
    """The loss became NaN or infinite; the message names the step."""


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """A 4-d batch in ``torch.channels_last`` (NHWC) memory, unambiguously so even with one channel.

    ``Tensor.contiguous(memory_format=torch.channels_last)`` leaves a one-channel batch as it is: with
    ``C = 1`` the NCHW strides ``(H W, H W, W, 1)`` count as channels_last too. PyTorch's layout propagation
    reads them as NCHW, though, so ``torch.cat`` of that batch with an NHWC map (a U-Net's input skip) comes
    out NCHW and the next convolution copies it back to NHWC, forward and backward. The same memory viewed
    with the NHWC strides ``(H W, 1, W, 1)`` (no copy) keeps every later map NHWC: on a grey MNIST-Seg batch
    of 16 at 128x128 a ResNet-18 U-Net's training step took 8% less time (``docs/segmentation.md``).

    Shape:
        - Input: ``(N, C, H, W)`` (other ranks are returned as they are)
        - Output: the same values, ``(N, C, H, W)`` with NHWC strides
    """
    if images.dim() != 4:
        return images
    images = images.contiguous(memory_format=torch.channels_last)
    n, channels, height, width = images.shape
    if channels == 1:
        images = images.as_strided(images.shape, (height * width, 1, width, 1))
    return images


class Callback:
    """Base class: override the events you need. ``trainer`` gives access to everything."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None: ...
    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_interrupt(self, trainer: Trainer) -> None: ...
    def on_nonfinite(self, trainer: Trainer) -> None: ...


@dataclass
class Phase:
    """A later stretch of a run with its own data, optimiser and schedule (progressive resizing: the same
    model on larger images, the learning-rate schedule restarted).

    Attributes:
        start: the phase's first epoch (0-based); it lasts until the next phase's start or the run's end.
        enter: ``enter(trainer)`` sets ``trainer.train_loader``, ``val_loader``, ``optimizer`` and
            ``scheduler`` for the phase (the weights are kept).
    """

    start: int
    enter: Callable[[Trainer], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (third-party code draws from the global state)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states (Python, NumPy, torch CPU and CUDA) as tensors and plain containers."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": (torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Fit a model with a task's ``prepare``/``loss``/``evaluator`` on batch loaders.

    Args:
        model: the network.
        task: a :class:`cnnkit.tasks.base.Task`: ``prepare(batch, train=, device=, generator=)``,
            ``compute_loss(model, images, targets)`` returning ``{"loss": ...}`` and ``evaluator()``.
        train_loader / val_loader: :class:`cnnkit.data.loader.BatchLoader` (``epoch(e, start)``, ``len``).
        optimizer: the optimizer (see :func:`cnnkit.engine.optim.build_optimizer`).
        scheduler: an LR scheduler stepped once per optimizer step, or ``None``.
        epochs: number of epochs.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        amp: mixed precision; ``None`` means on for CUDA, off on CPU.
        grad_clip: max gradient norm, or ``None``.
        accumulate: batches per optimizer step.
        ema_decay: keep an exponential moving average of the weights (evaluated instead of the raw model).
        channels_last: keep 4-d weights and image batches in ``torch.channels_last`` memory (NHWC), as
            timm's ``--channels-last``: oneDNN's convolutions then run without layout conversions (a
            MobileNetV3 U-Net's training step on MNIST-Seg took 0.61 of the time on one CPU thread).
        callbacks: :class:`Callback` instances.
        seed: base seed of every random draw.
        distributed: a :class:`cnnkit.engine.distributed.DistributedContext`, or ``None``.
        phases: later :class:`Phase` s of the run, by increasing start (``epochs`` counts them all).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        train_loader: Any,
        val_loader: Any | None,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None = None,
        *,
        epochs: int = 1,
        device: str | torch.device = "auto",
        amp: bool | None = None,
        grad_clip: float | None = None,
        accumulate: int = 1,
        ema_decay: float | None = None,
        channels_last: bool = False,
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        distributed: Any | None = None,
        phases: Sequence[Phase] = (),
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.model = (
            model.to(self.device, memory_format=torch.channels_last)
            if channels_last
            else model.to(self.device)
        )
        self.task = task
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.epochs = epochs
        self.amp = (self.device.type == "cuda") if amp is None else amp
        self.amp_dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp and self.amp_dtype == torch.float16
        )
        self.grad_clip = grad_clip
        self.accumulate = accumulate
        self.callbacks = list(callbacks)
        self.seed = seed
        self.distributed = distributed
        self.ema = None
        if ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self._unwrapped(), multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
            )
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already consumed (resume position)
        self.step = 0  # optimizer steps taken
        self.history: list[dict[str, Any]] = []  # one row per epoch
        self.epoch_loss = torch.zeros(2, dtype=torch.float64)  # sum and count of this epoch's batch losses
        self._window: tuple[int, dict[str, Any], torch.Tensor] | None = None
        self.metrics: dict[str, Any] = {}
        self.should_stop = False
        self.epoch_time = 0.0
        self.phases = sorted(phases, key=lambda phase: phase.start)
        self.phase = 0  # phases entered

    # -- helpers -------------------------------------------------------------------------------------------
    def _unwrapped(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluated and saved as "best": the EMA weights when enabled."""
        return self.ema.module if self.ema is not None else self._unwrapped()

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0, or not distributed)."""
        return self.distributed is None or self.distributed.rank == 0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _fire(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def _batch_generator(self) -> torch.Generator:
        # Augmentation draws depend on (seed, epoch, batch) only, so a resumed run replays them exactly.
        batch = self.epoch * len(self.train_loader) + self.batch_in_epoch
        return torch.Generator().manual_seed(self.seed * 1_000_003 + batch)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything but the model weights needed to resume: optimizer, scheduler, scaler, EMA, RNG."""
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Restore the loop position from checkpoint metadata (entering the phase it was in), then
        :meth:`state_dict`."""
        self.epoch = int(meta["epoch"])
        self.batch_in_epoch = int(meta["batch_in_epoch"])
        self.step = int(meta["step"])
        self.epoch_loss = torch.tensor(meta.get("epoch_loss", [0.0, 0.0]), dtype=torch.float64)
        self.history = list(meta.get("history", []))
        self._enter_phases()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])

    def _enter_phases(self) -> None:
        """Enter every phase that has started by :attr:`epoch` and was not entered yet."""
        while self.phase < len(self.phases) and self.phases[self.phase].start <= self.epoch:
            self.phases[self.phase].enter(self)
            self.phase += 1

    def position(self) -> dict[str, Any]:
        """Loop position and history, JSON-serialisable (stored as checkpoint metadata)."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "epoch_loss": self.epoch_loss.tolist(),
            "seed": self.seed,
            "history": self.history,
        }

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train from the current position to ``epochs``; returns the per-epoch history."""
        self._fire("on_fit_start")
        try:
            while self.epoch < self.epochs and not self.should_stop:
                self._enter_phases()
                self._fire("on_epoch_start")
                start = time.perf_counter()
                train_loss = self._train_epoch()
                # a model's later stages (R-CNN's SVMs) fit the weights that are evaluated and saved
                self.task.after_train_epoch(
                    self.eval_model,
                    self.train_loader,
                    epoch=self.epoch,
                    epochs=self.epochs,
                    device=self.device,
                )
                self.metrics = self.validate() if self.val_loader is not None else {}
                self.epoch_time = time.perf_counter() - start
                row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.lr, "train_loss": train_loss}
                row.update({k: v for k, v in self.metrics.items() if isinstance(v, int | float)})
                row["time"] = self.epoch_time
                self.history.append(row)
                self._fire("on_validation_end", self.metrics)
                self.epoch += 1
                self.batch_in_epoch = 0
                self.epoch_loss.zero_()
                self._window = None
                self._fire("on_epoch_end")
        except KeyboardInterrupt:
            self._rewind_to_window()
            self._fire("on_interrupt")
            raise
        except NonFiniteLossError:
            self._fire("on_nonfinite")
            raise
        self._fire("on_fit_end")
        return self.history

    def _train_epoch(self) -> float:
        self.model.train()
        n_batches = len(self.train_loader)
        self.optimizer.zero_grad(set_to_none=True)
        for batch in self.train_loader.epoch(self.epoch, start=self.batch_in_epoch):
            if self.batch_in_epoch % self.accumulate == 0:
                # Where a Ctrl-C resumes from: the start of this accumulation window, with its RNG state.
                self._window = (self.batch_in_epoch, rng_state(), self.epoch_loss.clone())
            images, targets = self.task.prepare(
                batch, train=True, device=self.device, generator=self._batch_generator()
            )
            images = self._layout(images)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                loss = self.task.compute_loss(self.model, images, targets)["loss"]
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}; stopped, the last "
                    "good checkpoint is kept (try a lower optim.lr or grad_clip=1.0)"
                )
            self.scaler.scale(loss / self.accumulate).backward()
            detached = loss.detach()
            self.epoch_loss += torch.stack([detached.double().cpu(), torch.ones((), dtype=torch.float64)])
            self.batch_in_epoch += 1
            if self.batch_in_epoch % self.accumulate == 0 or self.batch_in_epoch == n_batches:
                self._optimizer_step()
                self._window = None  # at a step boundary: nothing to rewind
                self._fire("on_step_end", detached)
            if self.should_stop:
                break
        return (self.epoch_loss[0] / self.epoch_loss[1].clamp(min=1)).item()

    def _layout(self, images: Any) -> Any:
        """An image batch in the trainer's memory format (other inputs as they are)."""
        if self.channels_last and isinstance(images, torch.Tensor):
            return to_channels_last(images)
        return images

    def _rewind_to_window(self) -> None:
        """After an interrupt: back to the start of the unfinished accumulation window (weights untouched)."""
        if self._window is not None:
            self.batch_in_epoch, rng, self.epoch_loss = self._window
            set_rng_state(rng)

    def _optimizer_step(self) -> None:
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self._unwrapped())
        self.step += 1

    @torch.no_grad()
    def validate(self, loader: Any | None = None) -> dict[str, Any]:
        """Metrics of :attr:`eval_model` on ``loader`` (default: the validation loader), reduced over ranks."""
        loader = loader if loader is not None else self.val_loader
        model = self.eval_model
        was_training = model.training
        model.eval()
        evaluator = self.task.evaluator()
        for batch in loader.epoch(0):
            images, targets = self.task.prepare(batch, train=False, device=self.device)
            images = self._layout(images)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                outputs = model(images)
            evaluator.update(outputs, targets)
        if self.distributed is not None:
            evaluator.reduce(self.distributed.all_reduce)
        model.train(was_training)
        return evaluator.compute()
