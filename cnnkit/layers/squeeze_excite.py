"""Squeeze-and-Excitation channel attention (Hu et al., 2018, arXiv:1709.01507)."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Rescale channels by a gate computed from their global average.

    ``s = gate(fc2(act(fc1(mean_hw(x)))))``, ``y = x * s``, with ``fc1``/``fc2`` 1x1 convolutions.
    Children are named like ``torchvision.ops.SqueezeExcitation`` (``fc1``, ``fc2``) so MobileNetV3 and
    EfficientNet ``state_dict`` keys match torchvision's.

    Args:
        channels: input and output channels ``C``.
        squeeze_channels: hidden channels of the bottleneck.
        act_layer: activation between the two 1x1 convs (default ``ReLU``).
        gate_layer: gating function (default ``Sigmoid``; MobileNetV3 uses ``Hardsigmoid``).

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: ``(N, C, H, W)``
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.act = act_layer()
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s
