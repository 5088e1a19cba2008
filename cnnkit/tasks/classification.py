"""Image classification as a task: batch preparation, criterion and metrics, each callable alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cnnkit.tasks.images import channel_stats, normalize_images
from cnnkit.tasks.metrics import confusion_matrix

AugmentFn = Callable[..., tuple[torch.Tensor, Any]]


class ClassificationTask:
    """Prepare batches, compute the loss and accumulate metrics for classification.

    Args:
        num_classes: ``K``.
        mean / std: per-channel normalization applied after scaling ``uint8`` images to ``[0, 1]``.
        augment: a batched transform ``augment(images, labels, generator=g) -> (images, labels)`` applied to
            training batches (labels may come back soft, ``(B, K)``, after MixUp/CutMix).
        label_smoothing: ``eps`` of the smoothed cross-entropy (Szegedy et al., 2016).
        aux_weight: weight of auxiliary logits (GoogLeNet/Inception in train mode) in the loss.
    """

    name = "classification"

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentFn | None = None,
        label_smoothing: float = 0.0,
        aux_weight: float = 0.3,
    ) -> None:
        self.num_classes = num_classes
        self.mean = channel_stats(mean)
        self.std = channel_stats(std)
        self.augment = augment
        self.label_smoothing = label_smoothing
        self.aux_weight = aux_weight

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` or ``[0, 1]`` float images ``(B, C, H, W)`` -> normalized float32."""
        return normalize_images(images, self.mean, self.std)

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

    def evaluator(self) -> ClassificationEvaluator:
        """A fresh metric accumulator."""
        return ClassificationEvaluator(self.num_classes)


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
