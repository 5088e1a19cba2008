"""Normalization layers for ``(N, C, H, W)`` maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an ``(N, C, H, W)`` map, as in ConvNeXt.

    ``y[n, :, h, w] = (x[n, :, h, w] - mean_c) / sqrt(var_c + eps) * weight + bias``. Same parameters
    (``weight``, ``bias`` of shape ``(C,)``) as torchvision's ConvNeXt ``LayerNorm2d``.

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: ``(N, C, H, W)``
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
