"""Atrous Spatial Pyramid Pooling (ASPP), the context module of DeepLabV3.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017 (arXiv:1706.05587),
section 3.3: parallel branches look at the same map with different receptive fields, and their outputs are
concatenated and projected::

    branch 0: 1x1 conv                          -> BN -> ReLU
    branch 1..3: 3x3 conv, dilation r_i          -> BN -> ReLU      (r = 6, 12, 18 at output stride 16;
                                                                     doubled, 12, 24, 36, at stride 8)
    branch 4: global average pool -> 1x1 conv    -> BN -> ReLU -> upsample back to the map size
    project: concat (5 * C_out channels) -> 1x1 conv -> BN -> ReLU -> dropout

A 3x3 kernel with dilation ``d`` spans ``d * (k - 1) + 1 = 2d + 1`` pixels with 9 weights: the reference
page's "Dilated (atrous) convolutions increase RF without adding parameters". The pooling branch adds the
image-level context that a very large rate loses when most of its taps fall on padding.

Module names follow torchvision's ``ASPP`` (``convs.0..4``, ``project``), so a DeepLabV3 head built from it
loads torchvision's ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.conv import ConvNormAct


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv, BN, ReLU, then bilinear upsampling to the input size.

    Children are numbered ``0`` (pool), ``1`` (conv), ``2`` (BN), ``3`` (ReLU), like torchvision's.
    In training mode BatchNorm sees one value per channel and sample here, so a batch needs at least two
    images.

    Args:
        in_channels / out_channels: channels in and out.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, H, W)``, constant over ``H, W``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *ConvNormAct(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling: a 1x1 branch, one 3x3 branch per atrous rate, an image-pooling branch.

    Args:
        in_channels: channels of the backbone map.
        atrous_rates: dilation of each 3x3 branch; DeepLabV3 uses ``(6, 12, 18)`` at output stride 16 and
            ``(12, 24, 36)`` at output stride 8.
        out_channels: channels of every branch and of the output (256 in the paper).
        dropout: dropout probability after the projection (0.5, as torchvision).

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, H, W)``

    Example:
        >>> aspp = ASPP(64, atrous_rates=(6, 12, 18), out_channels=32).eval()
        >>> tuple(aspp(torch.randn(2, 64, 9, 11)).shape)
        (2, 32, 9, 11)
    """

    def __init__(
        self,
        in_channels: int,
        atrous_rates: Sequence[int] = (12, 24, 36),
        out_channels: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1)]
        branches += [ConvNormAct(in_channels, out_channels, 3, dilation=rate) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *ConvNormAct(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )
        self.atrous_rates = tuple(atrous_rates)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
