"""From a :class:`~cnnkit.engine.config.TrainConfig` to a finished run directory.

``train(config)`` builds the data, model, task, optimizer, schedule and callbacks, trains, and leaves in
the run directory: ``config.yaml``, ``metrics.csv``, ``last.safetensors`` + state, ``best.safetensors``,
``trainer_state.json`` and the plots. ``resume(run_dir)`` continues an interrupted run exactly where it
stopped. ``load_run_model(path)`` rebuilds a trained model for ``cnnkit eval`` / ``predict``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from cnnkit import transfer
from cnnkit.data.loader import BatchLoader
from cnnkit.data.sampler import EpochSampler
from cnnkit.engine.callbacks import (
    CheckpointCallback,
    CSVLogger,
    EarlyStopping,
    ProgressCallback,
    ProgressiveUnfreezing,
)
from cnnkit.engine.checkpoint import load_checkpoint, read_metadata
from cnnkit.engine.config import TrainConfig, config_from_dict, config_to_dict, load_config, save_config
from cnnkit.engine.distributed import DistributedContext
from cnnkit.engine.optim import build_optimizer, build_scheduler
from cnnkit.engine.trainer import Callback, Trainer, seed_everything
from cnnkit.errors import ConfigError, DataError
from cnnkit.models.registry import IMAGENET_MEAN, IMAGENET_STD, create_model, model_card
from cnnkit.tasks.classification import ClassificationTask

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


@dataclass
class ClassificationData:
    """Train and validation datasets with what the model and task need to know about them."""

    train: Dataset
    val: Dataset
    classes: list[str]
    in_chans: int
    image_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


class _Resized(Dataset):
    """Decode-time geometry for folders of photos: see :func:`resize_center_crop`."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset = dataset
        self.size = size
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return resize_center_crop(image, self.size), label


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased), then centre-crop to ``size x size``.

    Shape:
        - Input: ``(C, H, W)`` uint8
        - Output: ``(C, size, size)`` uint8
    """
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])


def image_mode(channels: int) -> str:
    """The :func:`cnnkit.data.read_image` mode giving ``channels`` channels."""
    return "GRAY" if channels == 1 else "RGB"


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(dataset):
        return dataset
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    if isinstance(getattr(dataset, "images", None), torch.Tensor):
        # Keep the in-memory fast path: slice the tensors instead of wrapping in a Subset.
        sliced = object.__new__(type(dataset))
        sliced.__dict__.update(dataset.__dict__)
        sliced.images, sliced.labels = dataset.images[idx], dataset.labels[idx]
        return sliced
    return Subset(dataset, idx.tolist())


def build_classification_data(config: TrainConfig) -> ClassificationData:
    """Datasets named by ``config.data.name``: ``mnist5k`` or ``imagefolder:PATH``.

    Raises:
        ConfigError: unknown data name.
        DataError: a folder layout that does not fit (missing split folders, no images).
    """
    from cnnkit.data import ImageFolder, MNIST5k

    name = config.data.name
    if name == "mnist5k":
        train, val = MNIST5k("train", pad_to_32=True), MNIST5k("test", pad_to_32=True)
        data = ClassificationData(train, val, list(MNIST5k.classes), 1, 32, MNIST_MEAN, MNIST_STD)
    elif name.startswith("imagefolder:"):
        root = pathlib.Path(name.partition(":")[2]).expanduser()
        if not root.is_dir():
            raise DataError(f"data folder not found: {root}")
        val_dir = next((root / s for s in ("val", "test", "valid") if (root / s).is_dir()), None)
        if not (root / "train").is_dir() or val_dir is None:
            raise DataError(
                f"{root}: expected sub-folders train/ and val/ (or test/), each with one folder per class"
            )
        card = model_card(config.model)
        size = config.data.image_size or card.input_size[1]
        chans = card.input_size[0]
        mode = image_mode(chans)
        train_raw, val_raw = ImageFolder(root / "train", mode=mode), ImageFolder(val_dir, mode=mode)
        if train_raw.classes != val_raw.classes:
            raise DataError(
                f"{root}: train classes {train_raw.classes} differ from {val_dir.name} classes {val_raw.classes}"
            )
        data = ClassificationData(
            _Resized(train_raw, size),
            _Resized(val_raw, size),
            list(train_raw.classes),
            chans,
            size,
            None,
            None,
        )
    else:
        raise ConfigError(f"data={name!r} is not a classification dataset: use mnist5k or imagefolder:PATH")
    data.train = _subset(data.train, config.data.train_size, config.seed)
    data.val = _subset(data.val, config.data.val_size, config.seed + 1)
    return data


def build_augment(specs: list[Any]) -> Any | None:
    """The batched augmentation pipeline described by a config list (``None`` when empty)."""
    if not specs:
        return None
    from cnnkit.augment import build_transform

    return build_transform(list(specs), "augment")


def _normalization(
    config: TrainConfig, data: ClassificationData, in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if config.weights is None and data.mean is not None:
        return data.mean, data.std
    card = model_card(config.model)
    mean, std = (card.mean, card.std) if config.weights else (IMAGENET_MEAN, IMAGENET_STD)
    if in_chans != len(mean):
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return tuple(mean), tuple(std)


def default_run_dir(config: TrainConfig) -> pathlib.Path:
    """``output_dir`` if set, else ``runs/<task>/<name>`` (``<name>`` defaults to the model; ``-2``, ``-3``...
    appended when taken)."""
    if config.output_dir:
        return pathlib.Path(config.output_dir)
    base = pathlib.Path("runs") / config.task / (config.name or config.model)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@dataclass
class RunResult:
    """What a finished run returns: its directory, final and best metrics, history."""

    run_dir: pathlib.Path
    metrics: dict[str, Any]
    best: float | None
    history: list[dict[str, Any]]
    seconds: float


def _build(
    config: TrainConfig, run_dir: pathlib.Path, dist: DistributedContext | None, callbacks: list[Callback]
):
    """Model, task, loaders, optimizer, schedule and trainer for a config."""
    if config.task != "classification":
        raise ConfigError(
            f"task={config.task!r}: `cnnkit train` supports task=classification in this release"
        )
    data = build_classification_data(config)
    num_classes = config.num_classes or len(data.classes)
    model = create_model(
        config.model,
        num_classes=num_classes,
        in_chans=data.in_chans,
        weights=config.weights,
        **config.model_kwargs,
    )
    transfer.apply_strategy(
        model,
        config.transfer.strategy,
        unfreeze=config.transfer.unfreeze,
        freeze_bn=config.transfer.freeze_bn,
    )
    mean, std = _normalization(config, data, data.in_chans)
    task = ClassificationTask(num_classes, mean, std, build_augment(config.augment), config.label_smoothing)
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    bs = config.data.batch_size
    train_loader = BatchLoader(
        data.train,
        EpochSampler(
            len(data.train),
            bs,
            shuffle=True,
            drop_last=len(data.train) > bs,
            seed=config.seed,
            rank=rank,
            world_size=world,
        ),
        num_workers=config.data.num_workers,
    )
    val_loader = BatchLoader(
        data.val,
        EpochSampler(len(data.val), config.data.eval_batch_size, shuffle=False, rank=rank, world_size=world),
    )
    lr_scale = 1.0 if config.transfer.strategy == "full" else config.transfer.backbone_lr_scale
    groups = transfer.param_groups(model, config.optim.weight_decay, lr_scale)
    optimizer = build_optimizer(
        groups,
        config.optim.name,
        config.optim.lr,
        config.optim.weight_decay,
        config.optim.momentum,
        config.optim.betas,
    )
    steps_per_epoch = -(-len(train_loader) // config.accumulate)
    schedule = config.schedule
    scheduler = build_scheduler(
        optimizer,
        config.epochs * steps_per_epoch,
        schedule.name,
        warmup_steps=int(schedule.warmup_epochs * steps_per_epoch),
        pct_start=schedule.pct_start,
        min_lr_ratio=schedule.min_lr_ratio,
        step_size=schedule.step_size * steps_per_epoch,
        gamma=schedule.gamma,
    )
    device = dist.device if dist else config.device
    if dist is not None:
        model = dist.wrap(model.to(dist.device))
    extra = {
        "config": config_to_dict(config),
        "classes": data.classes,
        "input": {"channels": data.in_chans, "size": data.image_size, "mean": list(mean), "std": list(std)},
    }
    all_callbacks: list[Callback] = [
        CheckpointCallback(run_dir, config.best_metric, extra),
        CSVLogger(run_dir / "metrics.csv"),
    ]
    if config.early_stopping_patience:
        all_callbacks.append(EarlyStopping(config.best_metric, config.early_stopping_patience))
    if config.transfer.progressive_every:
        all_callbacks.append(ProgressiveUnfreezing(config.transfer.progressive_every))
    if config.progress:
        all_callbacks.append(ProgressCallback(config.best_metric))
    if config.plots:
        from cnnkit.engine.report import ClassificationPlots

        all_callbacks.append(ClassificationPlots(run_dir, data.val, data.classes, config.best_metric))
    all_callbacks.extend(callbacks)
    trainer = Trainer(
        model,
        task,
        train_loader,
        val_loader,
        optimizer,
        scheduler,
        epochs=config.epochs,
        device=device,
        amp=config.amp,
        grad_clip=config.grad_clip,
        accumulate=config.accumulate,
        ema_decay=config.ema_decay,
        callbacks=all_callbacks,
        seed=config.seed,
        distributed=dist,
    )
    return trainer


def train(
    config: TrainConfig, callbacks: list[Callback] | None = None, resume_from: pathlib.Path | None = None
) -> RunResult:
    """Train as ``config`` says; with ``resume_from`` (a run directory) continue its ``last`` checkpoint.

    Returns:
        :class:`RunResult` with the run directory and the final validation metrics.
    """
    start = time.perf_counter()
    threads = config.threads if config.threads is not None else auto_threads(config)
    if threads is not None:
        torch.set_num_threads(threads)
    dist = DistributedContext.from_env(config.device)
    seed_everything(config.seed + (dist.rank if dist else 0))
    if resume_from is not None:
        run_dir = pathlib.Path(resume_from)
    else:
        run_dir = default_run_dir(config)
        if dist is not None and dist.world_size > 1:
            # Every rank must agree on the directory: rank 0 decides, the others take its choice.
            run_dir = _broadcast_path(run_dir, dist)
    if dist is None or dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    trainer = _build(config, run_dir, dist, list(callbacks or []))
    if resume_from is not None:
        model_state, training_state, meta = load_checkpoint(run_dir / "last.safetensors")
        trainer._unwrapped().load_state_dict(model_state)
        trainer.load_state_dict(training_state, meta)
    try:
        history = trainer.fit()
    finally:
        if dist is not None:
            dist.close()
    best = next((cb.best for cb in trainer.callbacks if isinstance(cb, CheckpointCallback)), None)
    return RunResult(run_dir, trainer.metrics, best, history, time.perf_counter() - start)


def auto_threads(config: TrainConfig) -> int | None:
    """One intra-op thread for tiny models on the CPU (under 100 M MACs per image), else torch's default.

    Their ops are too small to split: the default LeNet-5 job took 25.4 s with two threads and 21.1 s with
    one on a 2-core machine.
    """
    on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    return 1 if on_cpu and model_card(config.model).macs < 100_000_000 else None


def _broadcast_path(path: pathlib.Path, dist: DistributedContext) -> pathlib.Path:
    import torch.distributed as tdist

    holder = [str(path)]
    tdist.broadcast_object_list(holder, src=0)
    return pathlib.Path(holder[0])


def resume(run_dir: str | pathlib.Path, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    """Continue the run in ``run_dir`` from ``last.safetensors`` (``overrides`` may extend ``epochs``).

    Raises:
        DataError: no run (config or checkpoint) in ``run_dir``.
    """
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "last.safetensors").is_file():
        raise DataError(f"{run_dir} is not a run directory with config.yaml and last.safetensors to resume")
    config = load_config(run_dir / "config.yaml", overrides)
    config = dataclasses.replace(config, output_dir=str(run_dir))
    return train(config, resume_from=run_dir)


def resolve_checkpoint(path: str | pathlib.Path) -> pathlib.Path:
    """A run directory gives its ``best.safetensors`` (else ``last``); a file is taken as it is."""
    path = pathlib.Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path}: no best.safetensors or last.safetensors in this directory")
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    return path


def load_run_model(path: str | pathlib.Path) -> tuple[torch.nn.Module, dict[str, Any], TrainConfig]:
    """Rebuild a trained model from a checkpoint (or run directory) and its stored config.

    Returns:
        ``(model in eval mode, checkpoint metadata, config)``.
    """
    from safetensors.torch import load_file

    checkpoint = resolve_checkpoint(path)
    meta = read_metadata(checkpoint)
    if "config" not in meta:
        raise DataError(f"{checkpoint} was not written by `cnnkit train` (no config in its metadata)")
    config = config_from_dict(meta["config"])
    model = create_model(
        config.model,
        num_classes=len(meta["classes"]) if not config.num_classes else config.num_classes,
        in_chans=meta["input"]["channels"],
        **config.model_kwargs,
    )
    model.load_state_dict(load_file(str(checkpoint), device="cpu"))
    return model.eval(), meta, config
