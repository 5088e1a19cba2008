"""Metrics shared by tasks: a confusion matrix accumulated across batches (and DDP ranks)."""

from __future__ import annotations

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """Counts ``M[t, p]`` of samples (or pixels) with true class ``t`` predicted as ``p``.

    Args:
        pred: predicted class indices, any shape.
        target: true class indices, same shape.
        num_classes: ``K``.
        ignore_index: target value to leave out (e.g. 255 for "void" pixels).

    Returns:
        ``(K, K)`` int64 matrix; rows are true classes, columns predictions.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    index = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
