"""Input normalization shared by every task."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def channel_stats(values: Sequence[float]) -> torch.Tensor:
    """Per-channel statistics as a ``(1, C, 1, 1)`` float32 tensor, ready to broadcast over a batch."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def normalize_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` after scaling ``uint8`` images to ``[0, 1]``.

    Shape:
        - images: ``(B, C, H, W)`` uint8 or float in ``[0, 1]``; mean, std: ``(1, C, 1, 1)``
        - Output: ``(B, C, H, W)`` float32
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    return (x - mean.to(x.device)) / std.to(x.device)
