"""Target dicts: checking labels, boxes and masks against the image they belong to.

A detection target is ``{"labels": int64 (N,), "boxes": float32 (N, 4)}`` with boxes ``xyxy`` in pixels:
``x1, y1`` the top-left corner and ``x2, y2`` the bottom-right corner in continuous image coordinates, so
a box covering pixel columns ``c0..c1`` (inclusive) has ``x1 = c0`` and ``x2 = c1 + 1``, and lies inside a
``W x H`` image when ``0 <= x1 <= x2 <= W`` and ``0 <= y1 <= y2 <= H``. Instance segmentation adds
``masks`` uint8 ``(N, H, W)`` (0/1); semantic segmentation uses ``mask`` int64 ``(H, W)`` with ``0`` for
background, ``c + 1`` for class ``c``, and ``ignore_index`` (255) for pixels that do not count.
"""

from __future__ import annotations

import torch

from cnnkit.errors import DataError

DEFAULT_BOX_TOLERANCE = 1.0
"""Pixels a box may stick out of the image before it is refused; boxes within it are clipped."""


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Convert centre/size boxes to corner boxes (used by the YOLO reader).

    Shape:
        ``(N, 4)`` in, ``(N, 4)`` out.
    """
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """Convert corner boxes to centre/size boxes (used by the YOLO writer).

    Shape:
        ``(N, 4)`` in, ``(N, 4)`` out.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def check_labels(labels: torch.Tensor, num_classes: int, source: str) -> torch.Tensor:
    """Return ``labels`` as int64 after checking every value is in ``[0, num_classes)``.

    Args:
        labels: class indices.
        num_classes: number of classes.
        source: where the labels came from, for the error message (file, annotation).

    Shape:
        ``labels``: ``(N,)``.
    """
    labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise DataError(f"{source}: label {int(labels[i])} of object {i} is out of range [0, {num_classes})")
    return labels


def check_boxes(
    boxes: torch.Tensor, width: int, height: int, source: str, tolerance: float = DEFAULT_BOX_TOLERANCE
) -> torch.Tensor:
    """Return ``boxes`` as float32 clipped to the image, after checking they lie inside it.

    Args:
        boxes: ``xyxy`` pixel boxes.
        width: image width ``W``.
        height: image height ``H``.
        source: where the boxes came from, for the error message.
        tolerance: pixels a box may stick out of the image; such boxes are clipped to it.

    Returns:
        The boxes as float32, clipped to ``[0, W] x [0, H]``.

    Shape:
        ``boxes``: ``(N, 4)``.

    Raises:
        DataError: a box is not finite, is inverted (``x2 < x1`` or ``y2 < y1``), or lies outside the image
            by more than ``tolerance`` pixels.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.unbind(-1)
    checks = [
        (~torch.isfinite(boxes).all(-1), "is not finite"),
        ((x2 < x1) | (y2 < y1), "is inverted (x2 < x1 or y2 < y1)"),
        (
            (x1 < -tolerance) | (y1 < -tolerance) | (x2 > width + tolerance) | (y2 > height + tolerance),
            f"lies outside the {width}x{height} image (tolerance {tolerance} px)",
        ),
    ]
    for bad, problem in checks:
        if bad.any():
            i = int(bad.nonzero()[0])
            raise DataError(
                f"{source}: box {i} {[round(v, 3) for v in boxes[i].tolist()]} (xyxy px) {problem}"
            )
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    return torch.minimum(boxes.clamp(min=0), limits)


def check_masks(masks: torch.Tensor, count: int, width: int, height: int, source: str) -> torch.Tensor:
    """Return instance ``masks`` as uint8 0/1 after checking there is one ``H x W`` mask per object.

    Shape:
        ``masks``: ``(N, H, W)``.
    """
    masks = torch.as_tensor(masks)
    if tuple(masks.shape) != (count, height, width):
        raise DataError(
            f"{source}: masks have shape {tuple(masks.shape)}, expected ({count}, {height}, {width})"
        )
    return (masks != 0).to(torch.uint8)
