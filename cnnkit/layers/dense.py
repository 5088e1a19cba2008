"""Dense connectivity of DenseNet (Huang et al., 2017, arXiv:1608.06993): ``x_l = H_l([x_0, ..., x_{l-1}])``.

Each layer of a :class:`DenseBlock` reads the concatenation of the block input and every earlier layer's
output, and adds ``growth_rate`` channels; a :class:`Transition` halves the channels and the resolution
between blocks. Module names follow torchvision's ``_DenseLayer`` / ``_DenseBlock`` / ``_Transition``
(``norm1``, ``conv1``, ``denselayer<i>``, ``norm``, ``conv``), so DenseNet ``state_dict`` keys match.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    """The bottleneck composite function ``H_l``: ``BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv``.

    The 1x1 convolution reduces the (growing) input to ``bn_size * growth_rate`` channels before the
    3x3 convolution produces the ``growth_rate`` new channels ("DenseNet-B").

    Args:
        in_channels: channels of the concatenated input.
        growth_rate: channels this layer adds (``k`` in the paper).
        bn_size: width multiplier of the bottleneck, ``bn_size * growth_rate`` channels.
        drop_rate: dropout probability on the new channels during training.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, growth_rate, H, W)``
    """

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int = 4, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(x)))
        x = self.conv2(self.relu2(self.norm2(x)))
        return self.dropout(x)


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each fed the concatenation of the block input and all earlier outputs.

    Args:
        num_layers: number of :class:`DenseLayer` (named ``denselayer1`` ...).
        in_channels: channels of the block input.
        growth_rate: channels each layer adds.
        bn_size: bottleneck width multiplier of each layer.
        drop_rate: dropout probability of each layer.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, in_channels + num_layers * growth_rate, H, W)``
    """

    def __init__(
        self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int = 4, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """Between dense blocks: ``BN -> ReLU -> 1x1 conv -> 2x2 average pool (stride 2)``.

    Args:
        in_channels: channels of the previous block's output.
        out_channels: channels after the 1x1 convolution (DenseNet-C halves them: compression 0.5).

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, floor(H / 2), floor(W / 2))``
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
