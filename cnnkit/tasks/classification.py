"""Image classification as a task: batch preparation, criterion, top-k predictions and metrics, each
callable alone."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cnnkit.data.sources import CLASS_DATA, RunData, class_data
from cnnkit.data.wrappers import resize_center_crop
from cnnkit.tasks.base import ImageInfo, Prediction, PredictOptions, Task, register_task, sample_items
from cnnkit.tasks.metrics import confusion_matrix


@dataclass
class TopK(Prediction):
    """The most likely classes of one image, best first.

    Attributes:
        labels: ``(k,)`` int64 class indices.
        scores: ``(k,)`` softmax probabilities.
    """

    labels: torch.Tensor
    scores: torch.Tensor

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """``{"topk": [{"label": name, "score": p}, ...]}``."""
        return {
            "topk": [
                {"label": classes[i], "score": round(s, 6)}
                for s, i in zip(self.scores.tolist(), self.labels.tolist())
            ]
        }


@register_task
class ClassificationTask(Task):
    """Prepare batches, compute the loss, predict the top-k classes and accumulate metrics.

    Args:
        model: the classifier (not used by the task's own methods; kept for the common contract).
        classes: class names.
        mean / std: per-channel normalization applied after scaling ``uint8`` images to ``[0, 1]``.
        augment: a batched transform ``augment(images, labels, generator=g) -> (images, labels)`` applied to
            training batches (labels may come back soft, ``(B, K)``, after MixUp/CutMix).
        label_smoothing: ``eps`` of the smoothed cross-entropy (Szegedy et al., 2016).
        aux_weight: weight of auxiliary logits (GoogLeNet/Inception in train mode) in the loss.
        num_classes: ``K`` when the model has more outputs than ``classes`` names (default ``len(classes)``).

    Example:
        >>> task = ClassificationTask(None, ["a", "b", "c"], mean=(0.5,), std=(0.25,))
        >>> logits = torch.tensor([[2.0, 0.0, 1.0]])
        >>> task.postprocess(logits, [ImageInfo((8, 8))], PredictOptions(topk=2))[0].to_dict(task.classes)
        {'topk': [{'label': 'a', 'score': 0.665241}, {'label': 'c', 'score': 0.244728}]}
    """

    name = "classification"
    default_model = "lenet5"
    default_metric = "accuracy"
    default_augment = [{"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}}]
    data_names = CLASS_DATA
    eval_batch_size = 500
    plot_samples = 500

    def __init__(
        self,
        model: nn.Module | None,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        augment: Callable[..., Any] | None = None,
        label_smoothing: float = 0.0,
        aux_weight: float = 0.3,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(model, classes, mean, std, augment)
        self.num_classes = num_classes or len(self.classes)
        self.label_smoothing = label_smoothing
        self.aux_weight = aux_weight

    @classmethod
    def build_data(cls, config: Any) -> RunData:
        """``mnist5k`` or ``imagefolder:ROOT``, read at the model card's input size and channels."""
        from cnnkit.models.registry import model_card

        return class_data(config, model_card(config.model).input_size)

    @classmethod
    def build_model(
        cls, config: Any, classes: Sequence[str], in_chans: int, weights: str | None = None
    ) -> nn.Module:
        """The registered classifier ``config.model`` with ``num_classes`` outputs, from ``weights`` (a file
        or a torchvision entry; a new head when the class count differs)."""
        from cnnkit.models.registry import create_model

        kwargs = {k: v for k, v in config.model_kwargs.items() if k != "in_chans"}
        num_classes = config.num_classes or len(classes)
        return create_model(
            config.model, num_classes=num_classes, in_chans=in_chans, weights=weights, **kwargs
        )

    @classmethod
    def weights_card(cls, config: Any) -> str | None:
        """The classifier itself."""
        return config.model

    @classmethod
    def config_options(cls, config: Any) -> dict[str, Any]:
        """``label_smoothing`` and ``num_classes`` from the config's own keys."""
        return {"label_smoothing": config.label_smoothing, "num_classes": config.num_classes}

    def prepare(
        self, batch: tuple[torch.Tensor, torch.Tensor], *, train: bool, device: torch.device, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a batch to ``device``, augment it (training only) and normalize it.

        Shape:
            - Input: images ``(B, C, H, W)`` uint8/float, labels ``(B,)`` int64
            - Output: images ``(B, C, H', W')`` float32, labels ``(B,)`` or soft ``(B, K)``
        """
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if train and self.augment is not None:
            images, labels = self.augment(images, labels, generator=generator)
        return self.normalize(images), labels

    def criterion(
        self, outputs: torch.Tensor | tuple[torch.Tensor, ...], targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy with label smoothing; hard ``(B,)`` or soft ``(B, K)`` targets.

        Returns:
            ``{"loss": total}`` (plus ``"aux"`` when the model returned auxiliary logits).
        """
        if isinstance(outputs, tuple):
            main, *aux = outputs
            aux_loss = sum(
                F.cross_entropy(a, targets, label_smoothing=self.label_smoothing)
                for a in aux
                if a is not None
            )
            loss = F.cross_entropy(main, targets, label_smoothing=self.label_smoothing)
            return {"loss": loss + self.aux_weight * aux_loss, "aux": aux_loss.detach()}
        return {"loss": F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)}

    def preprocess(self, image: torch.Tensor, size: int) -> tuple[torch.Tensor, ImageInfo]:
        """Resize the shorter side to ``size`` and centre-crop (:func:`~cnnkit.data.wrappers.resize_center_crop`),
        as ``imagefolder:`` data is read.

        Shape:
            - image: ``(C, H, W)`` uint8; Output: ``(C, size, size)`` uint8
        """
        return resize_center_crop(image, size), ImageInfo(tuple(image.shape[-2:]), 1.0, (size, size))

    def postprocess(
        self, outputs: torch.Tensor, infos: Sequence[ImageInfo], options: PredictOptions | None = None
    ) -> list[TopK]:
        """The ``options.topk`` most likely classes of each image (softmax probabilities), best first.

        Shape:
            - outputs: ``(B, K)`` logits; Output: ``B`` :class:`TopK` of ``min(topk, K)`` classes
        """
        options = options or PredictOptions()
        probs = outputs.float().softmax(1)
        scores, labels = probs.topk(min(options.topk, probs.shape[1]), dim=1)
        return [TopK(lb, sc) for sc, lb in zip(scores, labels)]

    def evaluator(self) -> ClassificationEvaluator:
        """A fresh metric accumulator."""
        return ClassificationEvaluator(self.num_classes)

    def summary(self, metrics: dict[str, Any], best: float | None = None) -> str:
        """``test accuracy A (best B), top-5 T``."""
        best_text = f" (best {best:.4f})" if best is not None else ""
        return f"test accuracy {metrics['accuracy']:.4f}{best_text}, top-5 {metrics['top5']:.4f}"

    def plot_metrics(self, metrics: dict[str, Any], out_dir: pathlib.Path) -> list[pathlib.Path]:
        """``confusion_matrix.png``."""
        from cnnkit.tasks import plots

        if "confusion" not in metrics:
            return []
        path = pathlib.Path(out_dir) / "confusion_matrix.png"
        plots.plot_confusion(metrics["confusion"], self.classes, path)
        return [path]

    def plot_predictions(
        self, model: nn.Module, val_data: Dataset, device: torch.device, path: pathlib.Path
    ) -> None:
        """Validation images with their top classes' probabilities, misclassified ones first."""
        from cnnkit.tasks import plots

        items = sample_items(val_data, self.plot_samples)
        images = torch.stack([img for img, _ in items])
        labels = torch.tensor([int(label) for _, label in items])
        with torch.no_grad():
            x, _ = self.prepare((images, labels), train=False, device=device)
            probs = model(x).float().softmax(1).cpu()
        plots.plot_predictions(images, labels, probs, self.classes, path)


class ClassificationEvaluator:
    """Accumulates loss, top-1/top-5 and the confusion matrix over batches; reducible across DDP ranks."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.totals = torch.zeros(3, dtype=torch.float64)  # loss sum, top-5 correct, count

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of logits ``(B, K)`` and hard labels ``(B,)``."""
        logits, labels = logits.float().cpu(), labels.cpu()
        self.confusion += confusion_matrix(logits.argmax(1), labels, self.num_classes)
        k = min(5, self.num_classes)
        top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        self.totals += torch.tensor([loss.item(), top5.item(), labels.numel()], dtype=torch.float64)

    def reduce(self, all_reduce: Callable[[torch.Tensor], None]) -> None:
        """Sum the accumulated state across processes with ``all_reduce`` (in place)."""
        all_reduce(self.confusion)
        all_reduce(self.totals)

    def compute(self) -> dict[str, Any]:
        """``accuracy``, ``top5``, ``loss``, ``samples``, ``per_class_accuracy`` and ``confusion`` (lists)."""
        count = max(self.totals[2].item(), 1.0)
        per_class = self.confusion.diag().double() / self.confusion.sum(1).clamp(min=1).double()
        return {
            "accuracy": self.confusion.diag().sum().item() / count,
            "top5": self.totals[1].item() / count,
            "loss": self.totals[0].item() / count,
            "samples": int(self.totals[2].item()),
            "per_class_accuracy": per_class.tolist(),
            "confusion": self.confusion.tolist(),
        }
