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

from cnnkit import transfer
from cnnkit.data.collate import collate_detection
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
from cnnkit.engine.datasets import RunData, build_data
from cnnkit.engine.distributed import DistributedContext
from cnnkit.engine.optim import build_optimizer, build_scheduler
from cnnkit.engine.trainer import Callback, Trainer, seed_everything
from cnnkit.errors import ConfigError, DataError, did_you_mean
from cnnkit.models.pretrained import is_weights_file, load_pretrained, read_state_dict
from cnnkit.models.registry import IMAGENET_MEAN, IMAGENET_STD, create_model, model_card
from cnnkit.tasks.classification import ClassificationTask

DETECTORS = ("yolo", "faster_rcnn", "mask_rcnn")
"""``model=`` names of ``task=detection`` (``mask_rcnn`` also serves ``task=segmentation``)."""
SEGMENTERS = ("unet", "fcn", "deeplabv3", "deeplabv3plus", "mask_rcnn")
"""``model=`` names of ``task=segmentation``."""
DEFAULT_BACKBONE = "resnet18"
"""Backbone of a detector when ``backbone=`` is not given (segmentation models have their own defaults)."""
DEFAULT_AUGMENT: dict[str, list[Any]] = {
    "classification": [{"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}}],
    "detection": [{"RandomAffine": {"degrees": 0, "translate": [0.1, 0.1], "scale": [0.8, 1.2]}}],
    "segmentation": [{"RandomAffine": {"degrees": 0, "translate": [0.1, 0.1], "scale": [0.8, 1.2]}}],
}
"""``augment:`` when the config leaves it unset: small shifts and scalings (no rotation for boxes, which a
rotation would loosen)."""
DEFAULT_METRIC = {"classification": "accuracy", "detection": "map", "segmentation": "miou"}
"""``best_metric`` when the config leaves it unset (``mask_map`` for Mask R-CNN)."""


def best_metric(config: TrainConfig) -> str:
    """The validation metric that selects ``best``: ``config.best_metric`` or the task's default."""
    if config.best_metric:
        return config.best_metric
    return "mask_map" if config.model == "mask_rcnn" else DEFAULT_METRIC.get(config.task, "loss")


def is_instance_model(config: TrainConfig) -> bool:
    """Whether the run trains a detector-style model (boxes; Mask R-CNN also masks)."""
    return config.task == "detection" or config.model == "mask_rcnn"


def build_model(
    config: TrainConfig, classes: list[str], in_chans: int, weights: str | None = None
) -> torch.nn.Module:
    """The network a config names, for ``classes`` (object classes; background is added where needed).

    Args:
        config: ``task``, ``model``, ``backbone``, ``model_kwargs``, ``num_classes``.
        classes: the data's class names.
        in_chans: image channels.
        weights: pretrained weights of the classifier (classification); for detection and segmentation,
            either a checkpoint of the whole task model (a ``best``/``last.safetensors`` of an earlier run
            of the same model and classes, which initialises every layer: ultralytics' ``model=best.pt``,
            timm's ``--initial-checkpoint``) or weights of the backbone's classifier.

    Raises:
        ConfigError: a model name the task does not know, an unknown option, or a whole-model checkpoint
            that does not fit (its missing, unexpected and mismatched keys).
    """
    kwargs = {k: v for k, v in config.model_kwargs.items() if k != "in_chans"}
    if config.task == "classification":
        num_classes = config.num_classes or len(classes)
        return create_model(
            config.model, num_classes=num_classes, in_chans=in_chans, weights=weights, **kwargs
        )
    if weights and is_weights_file(weights):
        model = _build_task_model(config, classes, in_chans, kwargs)
        state = read_state_dict(weights)
        own = model.state_dict()
        if 2 * len(own.keys() & state.keys()) >= len(own):  # a whole task model, not a classifier
            return load_pretrained(model, state, source=weights)
    if weights:
        kwargs["weights"] = weights
    return _build_task_model(config, classes, in_chans, kwargs)


def _build_task_model(
    config: TrainConfig, classes: list[str], in_chans: int, kwargs: dict[str, Any]
) -> torch.nn.Module:
    """The detection or segmentation model of ``config`` (``kwargs``: its options, backbone weights included)."""
    names = DETECTORS[:2] if config.task == "detection" else SEGMENTERS
    if config.model not in names and not (config.task == "detection" and config.model == "mask_rcnn"):
        raise ConfigError(
            f"model={config.model!r} is not a {config.task} model{did_you_mean(config.model, names)}; "
            f"choose one of {', '.join(names)}"
        )
    if is_instance_model(config):
        backbone = config.backbone or DEFAULT_BACKBONE
        return _detector_class(config.model)(backbone, len(classes), in_chans=in_chans, **kwargs)
    from cnnkit.tasks.segmentation import create_model as create_segmentation_model

    return create_segmentation_model(
        config.model, num_classes=len(classes) + 1, backbone=config.backbone, in_chans=in_chans, **kwargs
    )


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


def _detector_class(name: str) -> type[torch.nn.Module]:
    if name == "yolo":
        from cnnkit.tasks.detection.yolo import YOLODetector

        return YOLODetector
    if name == "faster_rcnn":
        from cnnkit.tasks.detection.faster_rcnn import FasterRCNN

        return FasterRCNN
    from cnnkit.tasks.detection.mask_rcnn import MaskRCNN

    return MaskRCNN


def build_task(
    config: TrainConfig,
    model: torch.nn.Module,
    data: RunData,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Any:
    """The task object (prepare / criterion / evaluator) of a run, with its training augmentation."""
    specs = config.augment if config.augment is not None else DEFAULT_AUGMENT.get(config.task, [])
    augment = build_augment(specs)
    if config.task == "classification":
        num_classes = config.num_classes or len(data.classes)
        task_class, args = ClassificationTask, (num_classes, mean, std, augment, config.label_smoothing)
    elif is_instance_model(config):
        from cnnkit.tasks.detection.task import DetectionTask

        task_class, args = DetectionTask, (model, data.classes, mean, std, augment)
    else:
        from cnnkit.tasks.segmentation import SegmentationTask

        task_class, args = SegmentationTask, (len(data.classes) + 1, mean, std, augment)
    options = {"masks": True} if config.model == "mask_rcnn" else {}
    return _construct(task_class, args, {**options, **config.task_kwargs}, "task_kwargs")


def _construct(cls: type, args: tuple, kwargs: dict[str, Any], where: str) -> Any:
    """``cls(*args, **kwargs)``, with an unknown keyword reported as a config error naming ``where``."""
    import inspect

    accepted = list(inspect.signature(cls).parameters)[len(args) :]
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"{where}.{key}: {cls.__name__} has no option {key!r}{did_you_mean(key, accepted)}"
            )
    return cls(*args, **kwargs)


def _apply_transfer(config: TrainConfig, model: torch.nn.Module) -> list[dict[str, Any]]:
    """Freeze what the transfer strategy says; return the optimizer's parameter groups."""
    strategy = config.transfer
    lr_scale = 1.0 if strategy.strategy == "full" else strategy.backbone_lr_scale
    if config.task == "classification":
        transfer.apply_strategy(
            model, strategy.strategy, unfreeze=strategy.unfreeze, freeze_bn=strategy.freeze_bn
        )
        return transfer.param_groups(model, config.optim.weight_decay, lr_scale)
    # Task models: everything outside the backbone (neck, decoder, heads) is the head. fine_tune trains the
    # whole backbone at backbone_lr_scale, or only the stages in ``unfreeze``.
    if strategy.strategy not in ("full", "feature_extractor", "fine_tune"):
        raise ConfigError(
            f"unknown transfer strategy {strategy.strategy!r}: use full, feature_extractor or fine_tune"
        )
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        if strategy.strategy != "full":
            raise ConfigError(f"model={config.model!r} has no backbone to freeze; use transfer.strategy=full")
        return transfer.decay_groups(model.named_parameters(), config.optim.weight_decay)
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


def batch_collate(config: TrainConfig) -> Any:
    """The generic loader's collate: the default for classification, :func:`collate_detection` (targets as a
    list of dicts) for detection and segmentation."""
    return None if config.task == "classification" else collate_detection


def eval_batch_size(config: TrainConfig) -> int:
    """``data.eval_batch_size``, else 500 images for classification and 32 for the dense tasks."""
    if config.data.eval_batch_size:
        return config.data.eval_batch_size
    return 500 if config.task == "classification" else 32


def build_augment(specs: list[Any]) -> Any | None:
    """The batched augmentation pipeline described by a config list (``None`` when empty)."""
    if not specs:
        return None
    from cnnkit.augment import build_transform

    return build_transform(list(specs), "augment")


def _normalization(
    config: TrainConfig, data: RunData, in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data's own statistics when training from scratch, else those the (pretrained) weights expect:
    the ones stored with weights written by ``cnnkit train``, else the model card's."""
    if config.weights is None and data.mean is not None:
        return data.mean, data.std
    stored = _stored_normalization(config.weights) if config.weights else None
    card_name = config.model if config.task == "classification" else config.backbone
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
    data = build_data(config)
    model = build_model(config, data.classes, data.in_chans, config.weights)
    set_bn_momentum(model, config)
    groups = _apply_transfer(config, model)
    mean, std = _normalization(config, data, data.in_chans)
    task = build_task(config, model, data, mean, std)
    collate = batch_collate(config)
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
        collate_fn=collate,
        num_workers=config.data.num_workers,
    )
    val_loader = BatchLoader(
        data.val,
        EpochSampler(len(data.val), eval_batch_size(config), shuffle=False, rank=rank, world_size=world),
        collate_fn=collate,
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
    device = dist.device if dist else config.device
    if dist is not None:
        model = dist.wrap(model.to(dist.device))
    extra = {
        "config": config_to_dict(config),
        "classes": data.classes,
        "input": {"channels": data.in_chans, "size": data.image_size, "mean": list(mean), "std": list(std)},
    }
    metric = best_metric(config)
    all_callbacks: list[Callback] = [
        CheckpointCallback(run_dir, metric, extra),
        CSVLogger(run_dir / "metrics.csv"),
    ]
    if config.early_stopping_patience:
        all_callbacks.append(EarlyStopping(metric, config.early_stopping_patience))
    if config.transfer.progressive_every:
        all_callbacks.append(ProgressiveUnfreezing(config.transfer.progressive_every))
    if config.progress:
        all_callbacks.append(ProgressCallback(metric))
    if config.plots:
        from cnnkit.engine.report import plots_callback

        all_callbacks.append(plots_callback(config.task, is_instance_model(config), run_dir, data, metric))
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
        channels_last=config.channels_last,
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
    if not on_cpu or config.task != "classification":
        return None
    return 1 if model_card(config.model).macs < 100_000_000 else None


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
    model = build_model(config, list(meta["classes"]), meta["input"]["channels"])
    try:
        model.load_state_dict(load_file(str(checkpoint), device="cpu"))
    except RuntimeError as err:  # missing, unexpected or differently shaped parameters
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__
        raise DataError(
            f"{checkpoint} does not fit the model its config builds (written by another cnnkit version?): {detail}"
        ) from err
    return model.eval(), meta, config


def evaluate(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any], TrainConfig]:
    """Evaluate a trained model on its run's validation split (CUDA when available).

    Returns:
        ``(metrics, checkpoint metadata, config)``; the metrics are the task evaluator's (classification:
        accuracy, top-5, per class, confusion; detection: COCO mAP, per class, PR curves; segmentation: mIoU,
        per-class IoU and Dice) plus ``classes``.
    """
    model, meta, config = load_run_model(path)
    data = build_data(config)
    spec = meta["input"]
    task = build_task(dataclasses.replace(config, augment=[]), model, data, spec["mean"], spec["std"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    collate = batch_collate(config)
    loader = BatchLoader(
        data.val, EpochSampler(len(data.val), eval_batch_size(config), shuffle=False), collate_fn=collate
    )
    evaluator = task.evaluator()
    with torch.no_grad():
        for batch in loader.epoch(0):
            images, targets = task.prepare(batch, train=False, device=device)
            evaluator.update(model(images), targets)
    metrics = evaluator.compute()
    metrics["classes"] = list(meta["classes"])
    return metrics, meta, config
