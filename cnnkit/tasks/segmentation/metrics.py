"""Semantic-segmentation metrics, all computed from one confusion matrix.

The confusion matrix ``M`` (rows: true class, columns: predicted class) comes from
:func:`cnnkit.tasks.metrics.confusion_matrix` (re-exported here), summed over batches and, with
:meth:`SegmentationEvaluator.reduce`, over DDP ranks; the metrics are then computed once from the sum, so
they are exact dataset-level values, not means of per-batch values. For class ``c``::

    TP_c = M[c, c]        FP_c = sum_t M[t, c] - TP_c        FN_c = sum_p M[c, p] - TP_c

    IoU_c  = TP_c / (TP_c + FP_c + FN_c)            (Jaccard index; Everingham et al., Pascal VOC, IJCV 2010)
    Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)        (Sorensen-Dice coefficient, = F1 score of class c)
    pixel accuracy = sum_c TP_c / sum_{t, p} M[t, p]

A class absent from both the targets and the predictions has ``TP + FP + FN = 0``: its IoU and Dice are
undefined (NaN in the per-class vectors) and it is left out of the means :func:`miou` and :func:`dice`, so a
class that never occurs neither helps nor hurts. A class present in the targets but never predicted (or
predicted but absent) counts with IoU 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cnnkit.tasks.metrics import confusion_matrix

__all__ = [
    "SegmentationEvaluator",
    "confusion_matrix",
    "dice",
    "miou",
    "per_class_dice",
    "per_class_iou",
    "pixel_accuracy",
]


def _counts(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"a confusion matrix is square (K, K); got shape {tuple(confusion.shape)}")
    m = confusion.double()
    tp = m.diag()
    return tp, m.sum(0) - tp, m.sum(1) - tp


def per_class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every class, ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``.

    Args:
        confusion: ``(K, K)`` counts, rows true class, columns prediction.

    Returns:
        ``(K,)`` float64; NaN for a class absent from both targets and predictions.
    """
    tp, fp, fn = _counts(confusion)
    return tp / (tp + fp + fn)


def per_class_dice(confusion: torch.Tensor) -> torch.Tensor:
    """Dice coefficient of every class, ``Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``.

    Args:
        confusion: ``(K, K)`` counts, rows true class, columns prediction.

    Returns:
        ``(K,)`` float64; NaN for a class absent from both targets and predictions.
    """
    tp, fp, fn = _counts(confusion)
    return 2 * tp / (2 * tp + fp + fn)


def miou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes present in the targets or the predictions.

    Args:
        confusion: ``(K, K)`` counts, rows true class, columns prediction.

    Returns:
        ``mean_c IoU_c`` over classes with ``TP + FP + FN > 0``; NaN when the matrix is all zeros.

    Example:
        >>> miou(torch.tensor([[3, 1], [0, 2]]))  # IoU 3/4 and 2/3
        0.7083333333333333
    """
    return per_class_iou(confusion).nanmean().item()


def dice(confusion: torch.Tensor) -> float:
    """Mean Dice coefficient over the classes present in the targets or the predictions.

    Args:
        confusion: ``(K, K)`` counts, rows true class, columns prediction.

    Returns:
        ``mean_c Dice_c`` over classes with ``TP + FP + FN > 0``; NaN when the matrix is all zeros.
    """
    return per_class_dice(confusion).nanmean().item()


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Fraction of counted pixels predicted correctly, ``trace(M) / sum(M)``.

    Args:
        confusion: ``(K, K)`` counts, rows true class, columns prediction.

    Returns:
        The accuracy; NaN when the matrix is all zeros.
    """
    tp, _, fn = _counts(confusion)
    return (tp.sum() / (tp + fn).sum()).item()


class SegmentationEvaluator:
    """Accumulates the pixel confusion matrix and the cross-entropy over batches; reducible across DDP ranks.

    Args:
        num_classes: ``K`` (background included when it is a class).
        ignore_index: target value of pixels left out of every metric and of the loss.

    Example:
        >>> ev = SegmentationEvaluator(2)
        >>> logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): predicts [0, 1]
        >>> ev.update(logits, torch.tensor([[[0, 0]]]))
        >>> ev.compute()["pixel_accuracy"]
        0.5
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.totals = torch.zeros(2, dtype=torch.float64)  # loss sum over counted pixels, images

    @torch.no_grad()
    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        """Add a batch.

        Shape:
            - logits: ``(B, K, H, W)``
            - masks: ``(B, H, W)`` int64 class indices (``ignore_index`` for void pixels)
        """
        logits, masks = logits.float().cpu(), masks.long().cpu()
        self.confusion += confusion_matrix(logits.argmax(1), masks, self.num_classes, self.ignore_index)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        loss = F.cross_entropy(logits, masks, ignore_index=ignore, reduction="sum")
        self.totals += torch.tensor([loss.item(), masks.shape[0]], dtype=torch.float64)

    def reduce(self, all_reduce: Callable[[torch.Tensor], None]) -> None:
        """Sum the accumulated state across processes with ``all_reduce`` (in place)."""
        all_reduce(self.confusion)
        all_reduce(self.totals)

    def compute(self) -> dict[str, Any]:
        """The metrics of everything accumulated.

        Returns:
            ``miou``, ``dice``, ``pixel_accuracy``, ``loss`` (mean cross-entropy per counted pixel),
            ``pixels`` (counted), ``samples`` (images), ``per_class_iou`` and ``per_class_dice`` (lists, NaN
            for absent classes) and ``confusion`` (nested list).
        """
        pixels = int(self.confusion.sum().item())
        return {
            "miou": miou(self.confusion),
            "dice": dice(self.confusion),
            "pixel_accuracy": pixel_accuracy(self.confusion),
            "loss": self.totals[0].item() / max(pixels, 1),
            "pixels": pixels,
            "samples": int(self.totals[1].item()),
            "per_class_iou": per_class_iou(self.confusion).tolist(),
            "per_class_dice": per_class_dice(self.confusion).tolist(),
            "confusion": self.confusion.tolist(),
        }
