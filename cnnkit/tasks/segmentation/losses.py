"""Per-pixel losses for semantic segmentation: cross-entropy, soft Dice and focal loss.

Every loss takes logits ``(N, K, H, W)`` and an int64 mask ``(N, H, W)`` of class indices, and leaves out
the pixels whose target is ``ignore_index`` (255, the "void" label of Pascal VOC and of cnnkit's masks).
A batch whose pixels are all ignored gives a loss of 0 (with a gradient of 0), not NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _valid(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    if (
        logits.ndim != target.ndim + 1
        or logits.shape[0] != target.shape[0]
        or logits.shape[2:] != target.shape[1:]
    ):
        raise ValueError(
            f"logits (N, K, H, W) and target (N, H, W) disagree: {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = 255,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the pixels that are not ignored, ``-mean_i log softmax(z_i)[y_i]``.

    Equal to ``F.cross_entropy(logits, target, weight, ignore_index=ignore_index)`` (with ``weight`` the
    mean is weighted, ``sum_i w_{y_i} l_i / sum_i w_{y_i}``), except that a batch with no counted pixel gives 0
    instead of NaN.

    Args:
        logits: class scores.
        target: class indices.
        ignore_index: target value to leave out; ``None`` counts every pixel.
        weight: optional ``(K,)`` class weights.

    Returns:
        Scalar loss.

    Shape:
        - logits: ``(N, K, H, W)``; target: ``(N, H, W)`` int64.
    """
    valid = _valid(logits, target, ignore_index)
    if not valid.any():
        return logits.sum() * 0.0
    ignore = -100 if ignore_index is None else ignore_index
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = 255, smooth: float = 1.0
) -> torch.Tensor:
    """Soft multi-class Dice loss, ``1 - mean_c (2 sum_i p_ic g_ic + s) / (sum_i p_ic + sum_i g_ic + s)``.

    ``p = softmax(logits)`` over classes, ``g`` the one-hot target, sums over every counted pixel ``i`` of
    the batch (a batch-level Dice, so a class missing from one image does not dominate), ``s = smooth``
    keeps the ratio defined (a class absent from target and prediction scores ~1). Milletari et al., "V-Net",
    3DV 2016 (arXiv:1606.04797), with the squared denominators replaced by plain sums as in Sudre et al.,
    2017 (arXiv:1707.03237).

    Args:
        logits: class scores.
        target: class indices.
        ignore_index: target value to leave out; ``None`` counts every pixel.
        smooth: additive smoothing ``s`` of numerator and denominator.

    Returns:
        Scalar loss in ``[0, 1]``.

    Shape:
        - logits: ``(N, K, H, W)``; target: ``(N, H, W)`` int64.
    """
    valid = _valid(logits, target, ignore_index)
    num_classes = logits.shape[1]
    probs = logits.float().softmax(1)
    # sum_i g_ic is a class count and sum_i p_ic g_ic a sum of each pixel's true-class probability, so no
    # one-hot (N, K, H, W) is built: 2.8x faster forward + backward at 16x11x128x128 than with it
    # (benchmarks/segmentation_loss.py)
    if ignore_index is not None and not bool(valid.all()):
        probs = probs * valid.unsqueeze(1)
        target = torch.where(valid, target, 0)
        counts = torch.bincount(
            target.flatten(), weights=valid.flatten().to(probs.dtype), minlength=num_classes
        )
    else:
        counts = torch.bincount(target.flatten(), minlength=num_classes).to(probs.dtype)
    true_class = probs.gather(1, target.unsqueeze(1)).flatten()
    intersection = probs.new_zeros(num_classes).scatter_add(0, target.flatten(), true_class)
    cardinality = probs.sum((0, 2, 3)) + counts
    return 1.0 - ((2.0 * intersection + smooth) / (cardinality + smooth)).mean()


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | torch.Tensor | None = None,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Softmax focal loss, ``FL = -alpha_t (1 - p_t)^gamma log p_t``, averaged over counted pixels.

    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv:1708.02002), eq. 5, with
    ``p_t`` the softmax probability of the true class. ``(1 - p_t)^gamma`` shrinks the loss of pixels that
    are already right, so the rare hard ones dominate. ``gamma = 0`` and ``alpha = None`` give the
    cross-entropy; unlike ``F.cross_entropy(weight=alpha)`` the mean divides by the number of pixels, not by
    the sum of their weights (as in the paper).

    Args:
        logits: class scores.
        target: class indices.
        gamma: focusing parameter ``gamma >= 0`` (2 in the paper).
        alpha: class balance: ``None`` (1 for all), one float for every class, or ``K`` per-class weights.
        ignore_index: target value to leave out; ``None`` counts every pixel.

    Returns:
        Scalar loss.

    Shape:
        - logits: ``(N, K, H, W)``; target: ``(N, H, W)`` int64.
    """
    valid = _valid(logits, target, ignore_index)
    if not valid.any():
        return logits.sum() * 0.0
    log_probs = logits.float().log_softmax(1).movedim(1, -1)[valid]  # (P, K)
    classes = target[valid]
    log_pt = log_probs.gather(1, classes[:, None]).squeeze(1)
    loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        loss = loss * (alpha_t[classes] if alpha_t.ndim else alpha_t)
    return loss.mean()
