"""Residual blocks of ResNet (He et al., 2016, arXiv:1512.03385): ``output = F(x) + shortcut(x)``.

Module names follow torchvision's ``BasicBlock`` / ``Bottleneck`` (``conv1``, ``bn1``, ..., ``downsample.0``,
``downsample.1``) so ``state_dict`` keys of ResNets built from these blocks equal torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def _projection_shortcut(
    in_channels: int, out_channels: int, stride: int, norm_layer: NormFactory
) -> nn.Sequential | None:
    """``1x1 conv (stride s) -> norm`` when the block changes shape, else ``None`` (identity shortcut)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        norm_layer(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The block of ResNet-18/34. The shortcut is the identity, or a strided 1x1 projection (``downsample``)
    when the stride or the channel count changes.

    Args:
        in_channels: channels of the input.
        channels: channels of both convolutions and of the output (``expansion = 1``).
        stride: stride of the first convolution and of the projection.
        dilation: dilation (and padding) of both 3x3 convolutions, for dense prediction.
        norm_layer: factory called with a channel count (default ``BatchNorm2d``).

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, channels, H_out, W_out)`` with ``H_out = floor((H - 1) / stride) + 1``.
    """

    expansion: int = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        dilation: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = norm_layer(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(channels)
        self.downsample = _projection_shortcut(in_channels, channels, stride, norm_layer)

    def last_norm(self) -> nn.Module:
        """The norm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand, with a shortcut; the block of ResNet-50 and deeper.

    The stride sits on the 3x3 convolution (the "ResNet v1.5" placement torchvision uses). The 3x3 has
    ``width = floor(channels * base_width / 64) * groups`` channels: grouped for ResNeXt
    (``groups=32, base_width=4``), wider for Wide ResNet (``base_width=128``). The output has
    ``channels * expansion`` channels (``expansion = 4``).

    Args:
        in_channels: channels of the input.
        channels: the block's nominal width; output channels are ``4 * channels``.
        stride: stride of the 3x3 convolution and of the projection.
        dilation: dilation (and padding) of the 3x3 convolution, for dense prediction.
        groups: groups of the 3x3 convolution (cardinality in ResNeXt).
        base_width: channels per group at ``channels = 64``.
        norm_layer: factory called with a channel count (default ``BatchNorm2d``).

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, 4 * channels, H_out, W_out)`` with ``H_out = floor((H - 1) / stride) + 1``.
    """

    expansion: int = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = int(channels * (base_width / 64.0)) * groups
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False
        )
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection_shortcut(in_channels, out_channels, stride, norm_layer)

    def last_norm(self) -> nn.Module:
        """The norm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)
