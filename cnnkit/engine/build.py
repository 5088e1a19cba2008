"""Assemble a run from a :class:`~cnnkit.engine.config.TrainConfig`: its task, data, model, loaders,
optimiser, schedule, phases and callbacks, ending in a ready :class:`~cnnkit.engine.trainer.Trainer`.

Everything task-specific comes from the task class the config resolves to
(:func:`cnnkit.tasks.base.resolve_task`): which data it reads, how its model is built, its batches, loss and
metrics. Nothing here asks which task or model it is building.
"""

from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass
from typing import Any

import torch

from cnnkit import transfer
from cnnkit.data.loader import BatchLoader
from cnnkit.data.sampler import EpochSampler
from cnnkit.data.sources import RunData
from cnnkit.engine.callbacks import (
    CheckpointCallback,
    CloseAugment,
    CSVLogger,
    EarlyStopping,
    PlotsCallback,
    ProgressCallback,
    ProgressiveUnfreezing,
)
from cnnkit.engine.checkpoint import read_metadata
from cnnkit.engine.config import TrainConfig, apply_overrides, config_to_dict
from cnnkit.engine.distributed import DistributedContext
from cnnkit.engine.loggers import build_loggers
from cnnkit.engine.optim import build_optimizer, build_scheduler
from cnnkit.engine.trainer import Callback, Phase, Trainer
from cnnkit.errors import ConfigError
from cnnkit.models.registry import IMAGENET_MEAN, IMAGENET_STD, model_card
from cnnkit.tasks.base import Task, resolve_task


def task_class(config: TrainConfig) -> type[Task]:
    """The task class serving ``config.model`` under ``config.task`` (see :func:`resolve_task`)."""
    return resolve_task(config.task, config.model)[0]


def build_data(config: TrainConfig) -> RunData:
    """The run's datasets (``data.train_size`` / ``val_size`` subsets drawn from the seed).

    Raises:
        ConfigError: a data name the task does not read. DataError: a folder layout that does not fit.
    """
    data = task_class(config).build_data(config)
    return data.subset(config.data.train_size, config.data.val_size, config.seed)


def build_model(
    config: TrainConfig, classes: list[str], in_chans: int, weights: str | None = None
) -> torch.nn.Module:
    """The network a config names, for ``classes`` (object classes; background is added where the task
    needs it): :meth:`cnnkit.tasks.base.Task.build_model` of the config's task."""
    return task_class(config).build_model(config, classes, in_chans, weights)


def build_augment(specs: list[Any]) -> Any | None:
    """The batched augmentation pipeline described by a config list (``None`` when empty)."""
    if not specs:
        return None
    from cnnkit.augment import build_transform

    return build_transform(list(specs), "augment")


def build_task(
    config: TrainConfig,
    model: torch.nn.Module,
    classes: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Task:
    """The task object of a run, with its training augmentation (``augment:``, else the task's default)."""
    cls = task_class(config)
    specs = config.augment if config.augment is not None else cls.default_augment
    return cls.from_config(config, model, classes, mean, std, build_augment(specs))


def set_bn_momentum(model: torch.nn.Module, config: TrainConfig) -> None:
    """Set the BatchNorm momentum of a run: ``config.bn_momentum`` on every layer when given; else, when
    training from scratch, raise layers below 0.1 (PyTorch's default) to 0.1.

    MobileNetV3 and EfficientNet use 0.01, tuned for hundreds of ImageNet epochs: in a short run from scratch
    the running statistics then lag far behind the weights (a YOLO on MNIST-Det scored mAP 0 in eval mode
    after two epochs while its train-mode outputs were fine). Fine-tuning keeps the weights' own momentum.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            if config.bn_momentum is not None:
                module.momentum = config.bn_momentum
            elif config.weights is None and module.momentum < 0.1:
                module.momentum = 0.1


def param_groups(config: TrainConfig, model: torch.nn.Module) -> list[dict[str, Any]]:
    """Freeze what the transfer strategy says; return the optimizer's parameter groups.

    A model with a ``backbone`` (detectors, segmenters) counts everything outside it (neck, decoder, heads)
    as its head: ``fine_tune`` trains the whole backbone at ``backbone_lr_scale``, or only the stages in
    ``unfreeze``. A classifier's stages and head come from its own feature contract.
    """
    strategy = config.transfer
    lr_scale = 1.0 if strategy.strategy == "full" else strategy.backbone_lr_scale
    backbone = getattr(model, "backbone", None)
    if backbone is None and strategy.strategy == "full" and not hasattr(model, "head_modules"):
        # a model without stages (a classic U-Net, a user's plain module): one learning rate for all
        return transfer.decay_groups(model.named_parameters(), config.optim.weight_decay)
    if backbone is None:
        transfer.apply_strategy(
            model, strategy.strategy, unfreeze=strategy.unfreeze, freeze_bn=strategy.freeze_bn
        )
        return transfer.param_groups(model, config.optim.weight_decay, lr_scale)
    if strategy.strategy == "feature_extractor":
        transfer.set_trainable(backbone, False, strategy.freeze_bn)
    elif strategy.strategy == "fine_tune" and strategy.unfreeze:
        # the named stages of the backbone's classifier train; the rest of the backbone is frozen
        transfer.apply_strategy(model, "fine_tune", unfreeze=strategy.unfreeze, freeze_bn=strategy.freeze_bn)
    inside = {id(p) for p in backbone.parameters()}
    head = [(n, p) for n, p in model.named_parameters() if id(p) not in inside]
    return transfer.decay_groups(head, config.optim.weight_decay) + transfer.decay_groups(
        backbone.named_parameters(), config.optim.weight_decay, lr_scale
    )


def normalization(
    config: TrainConfig, data: RunData, in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data's own statistics when training from scratch, else those the (pretrained) weights expect:
    the ones stored with weights written by ``cnnkit train``, else the weights' model card's."""
    if config.weights is None and data.mean is not None:
        return data.mean, data.std
    stored = _stored_normalization(config.weights) if config.weights else None
    card_name = task_class(config).weights_card(config)
    card = model_card(card_name) if card_name and stored is None else None
    if stored is not None:
        mean, std = stored
    else:
        mean, std = (card.mean, card.std) if config.weights and card else (IMAGENET_MEAN, IMAGENET_STD)
    if in_chans != len(mean):
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return tuple(mean), tuple(std)


def _stored_normalization(weights: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean and std a ``cnnkit train`` checkpoint was trained with (``None`` for other weights).

    A backbone pretrained by one run (say on MNIST-5k, normalised by that data's statistics) and reused by
    another through ``weights=`` must see its inputs normalised the same way, not by the model card's
    ImageNet statistics.
    """
    path = pathlib.Path(weights)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    spec = read_metadata(path).get("input")
    if not isinstance(spec, dict) or "mean" not in spec or "std" not in spec:
        return None
    return tuple(spec["mean"]), tuple(spec["std"])


def eval_batch_size(config: TrainConfig) -> int:
    """``data.eval_batch_size``, else the task's (500 images for classification, 32 for dense tasks)."""
    return config.data.eval_batch_size or task_class(config).eval_batch_size


def eval_loader(config: TrainConfig, dataset: Any, task: Task, rank: int = 0, world: int = 1) -> BatchLoader:
    """A loader over ``dataset`` in order, in evaluation batches."""
    sampler = EpochSampler(len(dataset), eval_batch_size(config), shuffle=False, rank=rank, world_size=world)
    return BatchLoader(dataset, sampler, collate_fn=task.collate)


@dataclass
class _PhaseParts:
    """What a phase of a run trains with: its loaders, optimiser and schedule."""

    train_loader: BatchLoader
    val_loader: BatchLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any


def _phase_parts(
    config: TrainConfig,
    data: RunData,
    task: Task,
    groups: list[dict[str, Any]],
    dist: DistributedContext | None,
) -> _PhaseParts:
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    # Fresh group dicts: an optimiser and its schedule write "lr" and "initial_lr" into them, and a later
    # phase's schedule would start from the earlier phase's rate.
    groups = [dict(group) for group in groups]
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
        collate_fn=task.collate,
        num_workers=config.data.num_workers,
    )
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
    return _PhaseParts(train_loader, eval_loader(config, data.val, task, rank, world), optimizer, scheduler)


PHASE_KEYS = ("epochs", "data", "optim", "schedule")
"""What a phase may change: its length, the data it reads (``data.image_size`` for progressive resizing,
``data.batch_size``...), and its optimiser and learning-rate schedule (restarted at the phase's start)."""


def phase_configs(config: TrainConfig) -> list[TrainConfig]:
    """The config of each phase of a run: the run's own, then each of ``config.phases`` applied on the one
    before it (phases are cumulative, e.g. ``[{epochs: 3, data.image_size: 128, optim.lr: 0.001}]``).

    Raises:
        ConfigError: a phase key outside :data:`PHASE_KEYS`, or a phase without ``epochs``.
    """
    configs = [dataclasses.replace(config, phases=[])]
    for i, phase in enumerate(config.phases):
        for key in phase:
            if str(key).split(".")[0] not in PHASE_KEYS:
                raise ConfigError(
                    f"phases[{i}].{key}: a phase changes only {', '.join(PHASE_KEYS)} (and their sub-keys)"
                )
        if "epochs" not in phase:
            raise ConfigError(
                f"phases[{i}] needs its number of epochs, e.g. {{epochs: 3, data.image_size: 128}}"
            )
        configs.append(apply_overrides(configs[-1], phase))
    return configs


def build_trainer(
    config: TrainConfig,
    run_dir: pathlib.Path,
    dist: DistributedContext | None,
    callbacks: list[Callback],
    data: RunData | None = None,
) -> Trainer:
    """Model, task, loaders, optimizer, schedule, phases and callbacks of a run, as a :class:`Trainer`
    (``data``: the run's :func:`build_data`, when the caller has built it already)."""
    data = data if data is not None else build_data(config)
    model = build_model(config, data.classes, data.in_chans, config.weights)
    set_bn_momentum(model, config)
    groups = param_groups(config, model)
    mean, std = normalization(config, data, data.in_chans)
    task = build_task(config, model, data.classes, mean, std)
    first = _phase_parts(config, data, task, groups, dist)
    phases, start = [], config.epochs
    for phase_cfg in phase_configs(config)[1:]:
        phase_data = data if phase_cfg.data == config.data else None
        phases.append(Phase(start, _phase_entry(phase_cfg, phase_data, task, groups, dist)))
        start += phase_cfg.epochs
    device = dist.device if dist else config.device
    if dist is not None:
        model = dist.wrap(model.to(dist.device))
    # The input a trained model expects is that of the run's last phase (progressive resizing ends larger).
    size = phase_configs(config)[-1].data.image_size or data.image_size
    extra = {
        "config": config_to_dict(config),
        "classes": data.classes,
        "input": {"channels": data.in_chans, "size": size, "mean": list(mean), "std": list(std)},
    }
    metric = task.metric(config)
    all_callbacks: list[Callback] = [
        CheckpointCallback(run_dir, metric, extra),
        CSVLogger(run_dir / "metrics.csv"),
    ]
    if config.early_stopping_patience:
        if hasattr(getattr(model, "module", model), "after_train_epoch"):
            raise ConfigError(
                f"early_stopping_patience: {config.model} fits its last stage after the final epoch "
                "(after_train_epoch), which an early stop would skip; train a fixed number of epochs"
            )
        all_callbacks.append(EarlyStopping(metric, config.early_stopping_patience))
    if config.transfer.progressive_every:
        all_callbacks.append(ProgressiveUnfreezing(config.transfer.progressive_every))
    if config.close_mosaic:
        all_callbacks.append(CloseAugment(max(start - config.close_mosaic, 0), ("Mosaic",)))
    if config.progress:
        all_callbacks.append(ProgressCallback(metric))
    if config.plots:
        all_callbacks.append(PlotsCallback(run_dir, metric))
    # TensorBoard / MLflow: after the checkpoints and plots, whose files they log when the run ends
    all_callbacks.extend(build_loggers(config, run_dir))
    all_callbacks.extend(callbacks)
    trainer = Trainer(
        model,
        task,
        first.train_loader,
        first.val_loader,
        first.optimizer,
        first.scheduler,
        epochs=start,
        device=device,
        amp=config.amp,
        grad_clip=config.grad_clip,
        accumulate=config.accumulate,
        ema_decay=config.ema_decay,
        channels_last=config.channels_last,
        callbacks=all_callbacks,
        seed=config.seed,
        distributed=dist,
        phases=phases,
    )
    return trainer


def _phase_entry(
    config: TrainConfig,
    data: RunData | None,
    task: Task,
    groups: list[dict[str, Any]],
    dist: DistributedContext | None,
) -> Any:
    """What entering a phase does: read its data (``None``: the phase's own, e.g. at another image size),
    and restart the optimiser and schedule on the same parameter groups."""

    def enter(trainer: Trainer) -> None:
        parts = _phase_parts(config, data or build_data(config), task, groups, dist)
        trainer.train_loader, trainer.val_loader = parts.train_loader, parts.val_loader
        trainer.optimizer, trainer.scheduler = parts.optimizer, parts.scheduler

    return enter
