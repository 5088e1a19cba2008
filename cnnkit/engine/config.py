"""Run configuration: dataclasses, YAML files and ``key=value`` overrides.

A run is described by one :class:`TrainConfig`. It is built from defaults, then a shipped recipe
(``recipe=NAME``, or the one whose model and data the run names: :mod:`cnnkit.engine.recipes`), then a YAML
file, then command line overrides (``epochs=5 optim.lr=0.01 data=imagefolder:PATH``), in that order. Unknown or mistyped keys
raise :class:`~cnnkit.errors.ConfigError` naming the key and the closest valid one; values are checked
against the field's type. The resolved configuration is saved as ``config.yaml`` in the run directory, and
loading that file gives the same configuration back.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from cnnkit.errors import ConfigError, did_you_mean


@dataclass
class DataConfig:
    """Where the data comes from and how it is batched.

    ``name``: ``mnist5k`` (bundled), ``imagefolder:PATH`` (one sub-folder per class, with ``train/`` and
    ``val/`` (or ``test/``) splits), ``mnist-det``, ``mnist-seg``, ``shapes``, ``coco:PATH``, ``yolo:PATH``,
    ``voc:PATH``.
    """

    name: str = "mnist5k"
    batch_size: int = 64
    eval_batch_size: int | None = None  # None: 500 for classification, 32 for detection/segmentation
    num_workers: int = 0
    image_size: int | None = None
    train_size: int | None = None
    val_size: int | None = None


@dataclass
class OptimConfig:
    """Optimizer: ``sgd`` (with Nesterov momentum) or ``adamw``; norm and bias parameters get no decay."""

    name: str = "adamw"
    lr: float = 0.003
    weight_decay: float = 0.0005
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: ``onecycle``, ``cosine`` (with linear warmup), ``step`` or ``constant``."""

    name: str = "onecycle"
    warmup_epochs: float = 0.0
    pct_start: float = 0.25
    min_lr_ratio: float = 0.0
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class TransferConfig:
    """Transfer learning (see :mod:`cnnkit.transfer`).

    ``strategy``: ``full`` (train everything), ``feature_extractor`` (freeze the backbone, train a new
    head) or ``fine_tune`` (train the stages named in ``unfreeze`` and the head, with ``backbone_lr_scale``).
    A detector's or segmenter's stages are those of its backbone classifier (e.g. ``layer3`` of a ResNet,
    ``features.12`` of a MobileNetV3); its fine_tune without ``unfreeze`` trains the whole backbone.
    ``progressive_every``: unfreeze one more stage, top to bottom, every N epochs (0: off).
    """

    strategy: str = "full"
    unfreeze: list[str] = field(default_factory=list)
    backbone_lr_scale: float = 0.1
    progressive_every: int = 0
    freeze_bn: bool = True


@dataclass
class MlflowConfig:
    """Where ``logger=mlflow`` records a run (:class:`cnnkit.engine.loggers.MlflowLogger`).

    ``tracking_uri``: any MLflow tracking URI (``http://host:5000``, ``sqlite:///PATH/mlflow.db``,
    ``databricks``); ``None``: a SQLite store ``mlflow.db`` in the folder that holds the run directory
    (``runs/classification/mlflow.db`` for ``runs/classification/lenet5``), with artifacts in
    ``mlartifacts/`` beside it. ``experiment``: the MLflow experiment; ``None``: the run's task.
    """

    tracking_uri: str | None = None
    experiment: str | None = None


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults train LeNet-5 on the bundled MNIST-5k.

    ``task``: a registered task (``classification``, ``detection``, ``segmentation``,
    ``instance_segmentation``; ``cnnkit models --task``), and ``model`` a registered model of it (``yolo`` or
    ``faster_rcnn`` on a ``backbone``; ``unet``, ``fcn``, ``deeplabv3``, ``mask_rcnn``...). Left unset, the
    task is the model's and the model the task's default (:func:`resolve`); see
    :mod:`cnnkit.data.sources` for the ``data`` each task reads.
    ``recipe``: a shipped recipe whose settings are the defaults (``None``: the recipe of the run's model and
    data, if one is shipped; ``none``: no recipe). ``pretrain``: the config of a run trained first, whose
    best checkpoint becomes ``weights`` (encoder pretraining). ``phases``: later stretches of the run, each
    ``{epochs: N, ...}`` changing ``data`` / ``optim`` / ``schedule`` keys (progressive resizing:
    ``[{epochs: 3, data.image_size: 128, optim.lr: 0.001}]``), with the optimiser and schedule restarted.
    ``logger``: trackers written besides ``metrics.csv`` and the plots, any of :data:`LOGGERS`
    (``logger=tensorboard``, ``logger=[tensorboard,mlflow]``; :mod:`cnnkit.engine.loggers`), with
    ``mlflow`` saying where MLflow records the run.
    """

    task: str | None = None
    model: str | None = None
    recipe: str | None = None
    backbone: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task_kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # options of the task object, e.g. {loss: ce+dice}
    weights: str | None = None
    num_classes: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    augment: list[Any] | None = None  # None: the task's default (Task.default_augment); [] for none
    close_mosaic: int = 0  # the last N epochs train without the Mosaic of `augment` (on whole images)
    epochs: int = 12
    pretrain: dict[str, Any] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    label_smoothing: float = 0.1
    amp: bool | None = None
    grad_clip: float | None = None
    accumulate: int = 1
    ema_decay: float | None = None
    channels_last: bool = False  # NHWC weights and batches (faster convolutions on CPU)
    bn_momentum: float | None = None  # None: 0.1 for BatchNorm layers below it when training from scratch
    early_stopping_patience: int | None = None
    best_metric: str | None = None  # None: accuracy, map (detection), miou / mask_map (segmentation)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # intra-op CPU threads; None: 1 for tiny models, else torch's default
    output_dir: str | None = None
    name: str | None = None
    plots: bool = True
    progress: bool = True
    logger: list[str] = field(default_factory=list)  # a single name is a list of one
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


# Shorthands: ``data=mnist-det`` sets ``data.name``.
_SHORTHANDS = {"data": "name"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (from ``typing.get_type_hints``); convert int->float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if tp is Any:
        return value
    if origin is list and isinstance(value, str) and typing.get_args(tp) in ((str,), ()):
        value = [value]  # `logger=mlflow` means `logger=[mlflow]`
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return origin(_coerce(v, inner, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _set(obj: Any, dotted: str, value: Any, prefix: str = "") -> None:
    head, _, rest = dotted.partition(".")
    names = [f.name for f in dataclasses.fields(obj)]
    full = f"{prefix}{head}"
    if head not in names:
        raise ConfigError(f"unknown config key {full!r}{did_you_mean(head, names)}")
    hints = typing.get_type_hints(type(obj))
    current = getattr(obj, head)
    if dataclasses.is_dataclass(current):
        if rest:
            _set(current, rest, value, f"{full}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                _set(current, str(k), v, f"{full}.")
        elif head in _SHORTHANDS:
            _set(current, _SHORTHANDS[head], value, f"{full}.")
        else:
            raise ConfigError(f"{full}: expected a mapping of its keys, got {value!r}")
        return
    if rest:
        if isinstance(current, dict):
            setattr(obj, head, _merge(current, _nest(rest, value)))
            return
        raise ConfigError(f"{full} has no sub-key {rest!r}")
    setattr(obj, head, _coerce(value, hints[head], full))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``update``, mappings merged key by key (``pretrain.data.train_size=64`` keeps
    ``pretrain.data``'s other keys)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = _merge(out[key], value)
        out[key] = value
    return out


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is read as YAML (``5`` int, ``0.1`` float, ``[1, 2]`` list, ``null``).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"bad override {text!r}: expected key=value, e.g. epochs=5 or optim.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_config_file(path: str | pathlib.Path) -> dict[str, Any]:
    """The mapping of config keys in a YAML file.

    Raises:
        ConfigError: unreadable YAML or not a mapping. FileNotFoundError: ``path`` does not exist.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such config file", str(path))
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return loaded


def load_config(
    path: str | pathlib.Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults, then the run's recipe, then the YAML file at ``path`` (if any), then ``values`` (a mapping
    of keys, dotted or nested, as the Python API takes them), then ``key=value`` overrides; resolved and
    checked.

    The recipe is ``recipe=NAME`` if given, else the shipped recipe of the run's model and data, if any
    (``recipe=none``: no recipe); see :mod:`cnnkit.engine.recipes`.

    Raises:
        ConfigError: unreadable YAML, unknown keys (with the closest valid key), values of the wrong type, an
            unknown recipe, task or model.
        FileNotFoundError: ``path`` does not exist.
    """
    from cnnkit.engine import recipes

    layers: list[dict[str, Any]] = []
    if path is not None:
        layers.append(read_config_file(path))
    if values:
        layers.append(dict(values))
    layers.append(dict(parse_override(text) for text in overrides))
    user = TrainConfig()
    for layer in layers:
        user = apply_overrides(user, layer)
    config = TrainConfig()
    recipe = recipes.recipe_for(user)
    if recipe is not None:
        config = apply_overrides(config, {**recipe.config, "recipe": recipe.name})
    for layer in layers:
        config = apply_overrides(config, layer)
    return resolve(config)


def apply_overrides(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """A copy of ``config`` with ``values`` set: keys dotted (``optim.lr``) or nested mappings, checked.

    Raises:
        ConfigError: an unknown key (with the closest valid one) or a value of the wrong type.
    """
    config = copy.deepcopy(config)
    for key, value in values.items():
        _set(config, str(key), value)
    return config


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill in ``task`` and ``model`` (each from the other: the model's card names its task, a task names
    its default model) and check every value.

    Raises:
        ConfigError: an unknown task or model, a model of another task, or a value out of range.
    """
    from cnnkit.tasks.base import resolve_task

    task, model = resolve_task(config.task, config.model)
    config = dataclasses.replace(config, task=config.task or task.name, model=model)
    _validate(config)
    return config


LOGGERS = ("tensorboard", "mlflow")
"""The trackers ``logger=`` names (:mod:`cnnkit.engine.loggers`)."""

_CHOICES = {
    "optim.name": ("sgd", "adamw"),
    "schedule.name": ("onecycle", "cosine", "step", "constant"),
    "transfer.strategy": ("full", "feature_extractor", "fine_tune"),
}


def _validate(config: TrainConfig) -> None:
    for dotted, choices in _CHOICES.items():
        obj: Any = config
        for part in dotted.split("."):
            obj = getattr(obj, part)
        if obj not in choices:
            raise ConfigError(
                f"{dotted}={obj!r} is not one of {', '.join(choices)}{did_you_mean(obj, choices)}"
            )
    for name in config.logger:
        if name not in LOGGERS:
            raise ConfigError(
                f"logger={name!r} is not one of {', '.join(LOGGERS)}{did_you_mean(name, LOGGERS)}"
            )
    for key in ("epochs", "accumulate"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(config, key)}")
    if config.close_mosaic < 0:
        raise ConfigError(
            f"close_mosaic must be >= 0 (epochs at the end without Mosaic), got {config.close_mosaic}"
        )
    if config.data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {config.data.batch_size}")


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from defaults updated with a (nested) mapping, checked key by key (no
    recipe: a saved config is already complete)."""
    return apply_overrides(TrainConfig(), values)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain dict of a config (tuples become lists), ready for YAML."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: TrainConfig, path: str | pathlib.Path) -> None:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    pathlib.Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
