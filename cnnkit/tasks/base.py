"""The task contract: what every task (classification, detection, segmentation...) implements, and the task
registry.

A task turns a model's raw outputs into training signal and answers. The engine and the CLI drive every task
through this one contract, and never ask which task they hold:

==================  ====================================================================================
step                method
==================  ====================================================================================
build               :meth:`Task.build_data` (the ``data=`` names it reads), :meth:`Task.build_model` (a
                    registered model of the task, through the one model registry), :meth:`Task.from_config`
batches             :attr:`Task.collate`, :meth:`Task.prepare` (device, batched augmentation, normalisation)
training            :meth:`Task.forward` (the training forward pass), :meth:`Task.criterion` (the loss dict),
                    :meth:`Task.compute_loss` (both), :meth:`Task.after_train_epoch` (a model's stages
                    that are not gradient steps)
inference           :meth:`Task.preprocess` (one image to the model's input), :meth:`Task.postprocess`
                    (typed predictions in the original image's pixels), :meth:`Task.draw`
evaluation          :meth:`Task.evaluator`, :attr:`Task.default_metric`, :meth:`Task.summary`
reports             :meth:`Task.plot_metrics`, :meth:`Task.plot_predictions`
==================  ====================================================================================

Where losses are computed: always in the task's :meth:`~Task.criterion`, from the model's raw outputs and the
prepared targets; it is the only loss the trainer sees, and a model's ``forward`` never returns a loss. A
detector's loss terms depend on its own anchors and sampled proposals, so its task's ``criterion`` asks the
model's head for them (``model.criterion``), as detectron2's ROI heads own their losses; the trainer,
evaluators and tests still call the task.

A new task subclasses :class:`Task` and registers with :func:`register_task`; its models register with
``@register_model(task=NAME, ...)`` (:mod:`cnnkit.models.registry`). ``cnnkit train task=NAME model=...`` then
trains, evaluates and predicts with it, with no change to the engine or the CLI.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from cnnkit.data.sources import RunData
from cnnkit.data.wrappers import letterbox
from cnnkit.errors import ConfigError, did_you_mean
from cnnkit.tasks.images import channel_stats, normalize_images

AugmentFn = Callable[..., Any]


@dataclass
class ImageInfo:
    """Where a model input came from: what :meth:`Task.postprocess` needs to answer in the original pixels.

    Attributes:
        size: the original image's ``(height, width)``.
        scale: the factor the image was scaled by (letterboxing); predictions are divided by it.
        input_size: the model input's ``(height, width)``.
    """

    size: tuple[int, int]
    scale: float = 1.0
    input_size: tuple[int, int] | None = None

    @property
    def inner(self) -> tuple[int, int]:
        """``(height, width)`` of the scaled image inside the letterboxed input (the rest is padding)."""
        return max(1, round(self.size[0] * self.scale)), max(1, round(self.size[1] * self.scale))

    def restore(self, maps: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
        """Maps over the model input back to the original image: the letterbox padding cropped off (maps
        of another resolution than the input are first resized to it), then resized to :attr:`size`.

        Args:
            maps: per-pixel values over the model input (or a rescaled copy of it, e.g. a gate's map).
            mode: ``"nearest"`` for class indices, ``"bilinear"`` for scores.

        Shape:
            - maps: ``(C, h, w)``; Output: ``(C, H, W)`` with ``(H, W) = size``, the input's dtype
        """
        dtype = maps.dtype
        values = maps[None].float()
        if self.input_size is not None and tuple(maps.shape[-2:]) != tuple(self.input_size):
            values = _resize(values, self.input_size, mode)
        inner_h, inner_w = self.inner
        values = values[..., :inner_h, :inner_w]
        if (inner_h, inner_w) != tuple(self.size):
            values = _resize(values, self.size, mode)
        return values[0].to(dtype)


def _resize(values: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """``F.interpolate`` of ``(N, C, h, w)`` floats to ``size`` (bilinear without corner alignment)."""
    align = False if mode == "bilinear" else None
    return torch.nn.functional.interpolate(values, size=tuple(size), mode=mode, align_corners=align)


@dataclass
class PredictOptions:
    """Options of :meth:`Task.postprocess` at prediction time (``cnnkit predict --topk / --conf``).

    Attributes:
        topk: classes reported per image (classification).
        score_threshold: lowest detection score kept (detection).
    """

    topk: int = 5
    score_threshold: float = 0.25


@dataclass
class Prediction:
    """Base of the typed predictions a task returns for one image; :meth:`to_dict` is its JSON form."""

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """The JSON-ready form printed by ``cnnkit predict --json`` (class names from ``classes``)."""
        raise NotImplementedError

    def cpu(self) -> Prediction:
        """The same prediction with its tensors on the CPU (for drawing and printing)."""
        moved = {
            f.name: getattr(self, f.name).cpu()
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


class Task(abc.ABC):
    """The contract every task implements (see the module docs).

    A task object is built for one run: its model, the data's classes and the input normalisation. Class
    attributes describe the task as data.

    Attributes:
        name: registry name, the ``task=`` of a config.
        answers: other ``task=`` names it serves (Mask R-CNN trains under ``task=segmentation`` and
            ``task=detection``).
        default_model: ``model=`` when a config names the task but no model.
        default_metric: the validation metric that selects ``best``.
        default_augment: ``augment:`` specs when the config leaves it unset.
        data_names: the ``data=`` names :meth:`build_data` reads, for messages.
        eval_batch_size: validation batch when ``data.eval_batch_size`` is unset.
        plot_samples: validation images drawn in ``predictions.png``.

    Args:
        model: the task's model (its ``criterion``/``postprocess`` are used by detection; under DDP pass the
            unwrapped module).
        classes: class names, label order (no background).
        mean / std: per-channel normalisation applied after scaling ``uint8`` images to ``[0, 1]``.
        augment: a batched transform ``augment(images, targets, generator=g) -> (images, targets)`` applied
            to training batches.
    """

    name: ClassVar[str] = ""
    answers: ClassVar[tuple[str, ...]] = ()
    default_model: ClassVar[str | None] = None
    default_metric: ClassVar[str] = "loss"
    default_augment: ClassVar[list[Any]] = []
    data_names: ClassVar[str] = ""
    eval_batch_size: ClassVar[int] = 32
    plot_samples: ClassVar[int] = 12

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentFn | None = None,
    ) -> None:
        self.model = model
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.mean = channel_stats(mean)
        self.std = channel_stats(std)
        self.augment = augment

    # -- building ------------------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def build_data(cls, config: Any) -> RunData:
        """The train and validation datasets ``config.data`` names (a ``data=`` of :attr:`data_names`)."""

    @classmethod
    def model_num_classes(cls, classes: Sequence[str]) -> int:
        """The ``num_classes`` the task's models are built with for ``classes`` (object classes)."""
        return len(classes)

    @classmethod
    def build_model(
        cls, config: Any, classes: Sequence[str], in_chans: int, weights: str | None = None
    ) -> nn.Module:
        """The registered model ``config.model`` for ``classes``.

        ``weights`` is either a checkpoint of the whole task model (an earlier run's ``best``/``last``, same
        model and classes: every layer is initialised from it, as ultralytics' ``model=best.pt`` or timm's
        ``--initial-checkpoint``) or weights of the backbone's classifier (a file or a torchvision entry).

        Raises:
            ConfigError: an unknown option, or a whole-model checkpoint that does not fit.
        """
        from cnnkit.models.pretrained import is_weights_file, load_pretrained, read_state_dict
        from cnnkit.models.registry import create_model

        kwargs = {k: v for k, v in config.model_kwargs.items() if k != "in_chans"}
        if config.backbone:
            kwargs["backbone"] = config.backbone
        num_classes = config.num_classes or cls.model_num_classes(classes)
        if weights and is_weights_file(weights):
            model = create_model(config.model, num_classes=num_classes, in_chans=in_chans, **kwargs)
            state = read_state_dict(weights)
            own = model.state_dict()
            if 2 * len(own.keys() & state.keys()) >= len(own):  # a whole task model, not a classifier
                return load_pretrained(model, state, source=weights)
        return create_model(
            config.model, num_classes=num_classes, in_chans=in_chans, weights=weights, **kwargs
        )

    @classmethod
    def weights_card(cls, config: Any) -> str | None:
        """The registered classifier whose weights (and input statistics) the model's pretrained part uses:
        its backbone, by default (``None``: the model's own default)."""
        return config.backbone

    @classmethod
    def from_config(
        cls,
        config: Any,
        model: nn.Module,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentFn | None = None,
    ) -> Task:
        """The task object of a run: :meth:`config_options`, then ``config.task_kwargs`` (an unknown one is
        a :class:`ConfigError` naming the closest)."""
        accepted = [p for p in inspect.signature(cls).parameters if p not in _BASE_ARGS]
        for key in config.task_kwargs:
            if key not in accepted:
                raise ConfigError(
                    f"task_kwargs.{key}: {cls.__name__} has no option {key!r}{did_you_mean(key, accepted)}"
                )
        options = {**cls.config_options(config), **config.task_kwargs}
        return cls(model, classes, mean, std, augment, **options)

    @classmethod
    def config_options(cls, config: Any) -> dict[str, Any]:
        """Options of the task that come from the config's own keys rather than ``task_kwargs``."""
        return {}

    def metric(self, config: Any) -> str:
        """The validation metric that selects ``best``: ``config.best_metric`` or :attr:`default_metric`."""
        return config.best_metric or self.default_metric

    # -- batches -------------------------------------------------------------------------------------------
    collate: ClassVar[Callable[..., Any] | None] = None
    """The loader's collate function (``None``: stack images and labels)."""

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` or ``[0, 1]`` float images ``(B, C, H, W)`` -> normalised float32."""
        return normalize_images(images, self.mean, self.std)

    @abc.abstractmethod
    def prepare(
        self, batch: Any, *, train: bool, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Any]:
        """Move a batch to ``device``, augment it (training only) and normalise the images.

        Returns:
            ``(images (B, C, H, W) float32, targets)`` in the form :meth:`criterion` and the evaluator take.
        """

    def forward(self, model: nn.Module, images: torch.Tensor, targets: Any) -> Any:
        """The training forward pass (``model(images)``; two-stage detectors also take the targets)."""
        return model(images)

    @abc.abstractmethod
    def criterion(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """The loss of a batch: ``{"loss": total, ...detached parts}``."""

    def compute_loss(self, model: nn.Module, images: torch.Tensor, targets: Any) -> dict[str, torch.Tensor]:
        """The training forward pass and its loss dict."""
        return self.criterion(self.forward(model, images, targets), targets)

    def after_train_epoch(
        self, model: nn.Module, loader: Any, *, epoch: int, epochs: int, device: torch.device
    ) -> None:
        """Training a model does besides gradient steps, after an epoch's steps and before its validation.

        A model trained in stages defines ``after_train_epoch(batches, epoch=, epochs=)`` and gets the
        epoch's training batches prepared without augmentation (:meth:`prepare` with ``train=False``), drawn
        lazily: R-CNN fits its SVMs and box regressors on its fine-tuned features after the last epoch
        (:meth:`cnnkit.tasks.detection.rcnn.RCNN.after_train_epoch`), as a Lightning module's own hooks do.
        Other models have no such method and nothing happens.

        Args:
            model: the model that is evaluated and saved (the EMA copy when the run keeps one, else the
                trained model unwrapped from DDP).
            loader: the training loader (``epoch(e)`` yields its batches).
            epoch / epochs: the epoch just trained (0-based) and the run's number of epochs.
            device: where the batches go.
        """
        stage = getattr(model, "after_train_epoch", None)
        if stage is None:
            return
        batches = (self.prepare(batch, train=False, device=device) for batch in loader.epoch(epoch))
        stage(batches, epoch=epoch, epochs=epochs)

    # -- inference -----------------------------------------------------------------------------------------
    def preprocess(self, image: torch.Tensor, size: int) -> tuple[torch.Tensor, ImageInfo]:
        """One decoded image to the model's input geometry: letterboxed to ``size x size`` by default (the
        way the task's datasets read a user's images).

        Shape:
            - image: ``(C, H, W)`` uint8
            - Output: ``(C, size, size)`` uint8 and where it came from
        """
        boxed, info = letterbox(image, None, size)
        height, width = image.shape[-2:]
        return boxed, ImageInfo((height, width), float(info["scale"]), (size, size))

    @abc.abstractmethod
    def postprocess(
        self, outputs: Any, infos: Sequence[ImageInfo], options: PredictOptions | None = None
    ) -> list[Prediction]:
        """Typed predictions per image, in the original image's pixels (``infos`` from :meth:`preprocess`)."""

    def draw(self, image: torch.Tensor, prediction: Prediction) -> torch.Tensor | None:
        """The picture ``cnnkit predict`` writes for one image (``None``: none for this task).

        Shape:
            - image: ``(C, H, W)`` uint8 original; Output: ``(3, H, W)`` uint8
        """
        return None

    @abc.abstractmethod
    def evaluator(self) -> Any:
        """A fresh metric accumulator: ``update(outputs, targets)``, ``reduce(all_reduce)``, ``compute()``."""

    def summary(self, metrics: dict[str, Any], best: float | None = None) -> str:
        """One line of a run's final metrics (printed by ``cnnkit train``)."""
        value = metrics.get(self.default_metric)
        best_text = f" (best {best:.4f})" if best is not None else ""
        return f"{self.default_metric} {value:.4f}{best_text}" if value is not None else "finished"

    # -- reports -------------------------------------------------------------------------------------------
    def plot_metrics(self, metrics: dict[str, Any], out_dir: pathlib.Path) -> list[pathlib.Path]:
        """Write the task's metric plots (confusion matrix, PR curves...) into ``out_dir``; return them."""
        return []

    def plot_predictions(
        self, model: nn.Module, val_data: Dataset, device: torch.device, path: pathlib.Path
    ) -> None:
        """Write a grid of validation images with the model's predictions (drawn by :meth:`draw`, scores of
        at least 0.5) to ``path``; nothing when the task draws no pictures."""
        from torch.utils.data import default_collate

        from cnnkit.tasks import plots

        items = sample_items(val_data, self.plot_samples)
        if not items:
            return
        images, targets = (self.collate or default_collate)(items)
        with torch.no_grad():
            x, _ = self.prepare((images, targets), train=False, device=device)
            size = tuple(images.shape[-2:])
            infos = [ImageInfo(size, 1.0, size)] * len(items)
            predictions = self.postprocess(model(x), infos, PredictOptions(score_threshold=0.5))
        drawn = [self.draw(image, pred.cpu()) for image, pred in zip(images, predictions)]
        if any(d is None for d in drawn):
            return
        plots.save_grid(drawn, path, "predictions (score >= 0.5)")


_BASE_ARGS = ("model", "classes", "mean", "std", "augment")


def sample_items(dataset: Dataset, n: int) -> list:
    """``n`` evenly spaced items of ``dataset`` (so that a split stored class by class shows every class)."""
    count = min(n, len(dataset))
    index = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist() if count else []
    return [dataset[i] for i in index]


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a :class:`Task` subclass under its :attr:`~Task.name`.

    Raises:
        ValueError: no name, or the name is taken.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name` to be registered")
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered (by {_TASKS[cls.name].__module__})")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    _ensure_tasks_loaded()
    return list(_TASKS)


def get_task(name: str) -> type[Task]:
    """The registered task class ``name``.

    Raises:
        ConfigError: an unknown name (with the closest ones).
    """
    _ensure_tasks_loaded()
    if name not in _TASKS:
        raise ConfigError(
            f"unknown task {name!r}{did_you_mean(name, _TASKS)}; choose one of {', '.join(_TASKS)}"
        )
    return _TASKS[name]


def resolve_task(task: str | None, model: str | None) -> tuple[type[Task], str]:
    """The task class serving ``model`` under ``task=`` and the model name (either may be ``None``).

    The model's card names its task; ``task`` must be that task or one it :attr:`~Task.answers`. Without a
    model, the task's :attr:`~Task.default_model`; without either, classification's.

    Raises:
        ConfigError: an unknown task or model, or a model of another task (listing the task's models).
    """
    from cnnkit.models.registry import list_models, model_card

    requested = get_task(task) if task is not None else None
    if model is None:
        model = (requested or get_task("classification")).default_model
        if model is None:
            raise ConfigError(f"task={task} has no default model; name one with model=NAME")
    card = model_card(model)
    served = get_task(card.task)
    if task is not None and task != served.name and task not in served.answers:
        names = [n for n in list_models() if _serves(model_card(n).task, task)]
        raise ConfigError(
            f"model={model!r} is a {card.task} model, not a {task} model{did_you_mean(model, names)}; "
            f"{task} models: {', '.join(names) or 'none registered'}"
        )
    return served, model


def _serves(card_task: str, task: str) -> bool:
    return card_task == task or task in _TASKS[card_task].answers


def _ensure_tasks_loaded() -> None:
    # Importing the package registers the built-in tasks and their models.
    import cnnkit.tasks  # noqa: F401
