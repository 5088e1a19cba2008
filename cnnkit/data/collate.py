"""Collate functions for ``torch.utils.data.DataLoader``: stack images, keep variable-length targets apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor | list[torch.Tensor], list[dict[str, Any]]]:
    """Batch detection / segmentation items whose targets hold different numbers of objects.

    Args:
        batch: items ``(image (C, H, W), target dict)``.

    Returns:
        ``(images, targets)``: images stacked into one tensor when they all have the same shape, else the
        list of images; targets as the list of the items' dicts, in order.

    Shape:
        images: ``(B, C, H, W)`` when sizes agree.
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    if images and all(image.shape == images[0].shape for image in images):
        return torch.stack(images), targets
    return images, targets
