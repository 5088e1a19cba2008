"""MobileNet blocks: inverted residuals with linear bottlenecks (v2) and their SE / hard-swish form (v3).

Both are built on the depthwise-separable factorisation of the reference page ("Depthwise Separable
Convolutions"): a cheap 1x1 expansion to ``t`` times the channels, a ``k x k`` depthwise convolution (one
filter per channel) on the wide representation, and a 1x1 projection back to few channels with no
activation after it (a *linear* bottleneck, since a ReLU on few channels destroys information). The
residual connects the thin ends, the reverse of a ResNet bottleneck, hence "inverted".

Child names follow torchvision's ``mobilenet_v2`` (``conv``) and ``mobilenet_v3_*`` (``block``) so their
``state_dict`` loads as is. EfficientNet's MBConv (with stochastic depth) is in :mod:`cnnkit.layers.mbconv`.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers.conv import ActFactory, ConvNormAct, NormFactory
from cnnkit.layers.mbconv import make_divisible
from cnnkit.layers.squeeze_excite import SqueezeExcite


class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sandler et al., 2018, arXiv:1801.04381, Table 1).

    ``1x1 expand (ReLU6) -> 3x3 depthwise, stride s (ReLU6) -> 1x1 project (no activation)``, plus the
    input when ``stride == 1`` and ``in_channels == out_channels``. With ``expand_ratio == 1`` the
    expansion is left out (the first block of the network).

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        stride: stride of the depthwise conv, 1 or 2.
        expand_ratio: expansion factor ``t``; the hidden width is ``round(C_in * t)``.
        norm_layer: normalization factory called with a channel count.

    Shape:
        - Input: ``(N, C_in, H, W)``
        - Output: ``(N, C_out, ceil(H / stride), ceil(W / stride))``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, norm_layer=norm_layer, act_layer=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, norm_layer=norm_layer, act_layer=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            norm_layer(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.stride = stride
        self.out_channels = out_channels
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV3Block(nn.Module):
    """MobileNetV3 "bneck" block (Howard et al., 2019, arXiv:1905.02244, Tables 1-2).

    ``1x1 expand (act) -> k x k depthwise (act) -> [squeeze-excite] -> 1x1 project (no activation)``, plus
    the input when the stride is 1 and the channels are unchanged. The activation is ReLU or hard-swish
    ``x * relu6(x + 3) / 6``; the squeeze-excite gate is hard-sigmoid ``relu6(x + 3) / 6`` with
    ``make_divisible(C_exp / 4)`` hidden channels. A dilation above 1 replaces the stride (for dense
    prediction, as torchvision's ``dilated=True``).

    Args:
        in_channels: input channels ``C_in``.
        expanded_channels: hidden width ``C_exp``; equal to ``C_in`` leaves the expansion out.
        out_channels: output channels ``C_out``.
        kernel_size: depthwise kernel ``k`` (3 or 5).
        stride: depthwise stride, 1 or 2 (ignored when ``dilation > 1``).
        dilation: depthwise dilation.
        use_se: insert squeeze-and-excitation after the depthwise conv.
        act_layer: activation class (``nn.ReLU`` or ``nn.Hardswish``).
        norm_layer: normalization factory called with a channel count.

    Shape:
        - Input: ``(N, C_in, H, W)``
        - Output: ``(N, C_out, ceil(H / s), ceil(W / s))`` with ``s = self.stride``.
    """

    def __init__(
        self,
        in_channels: int,
        expanded_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        dilation: int = 1,
        use_se: bool = False,
        act_layer: ActFactory = nn.ReLU,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = 1 if dilation > 1 else stride
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(
                ConvNormAct(in_channels, expanded_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
            )
        layers.append(
            ConvNormAct(
                expanded_channels,
                expanded_channels,
                kernel_size,
                self.stride,
                groups=expanded_channels,
                dilation=dilation,
                norm_layer=norm_layer,
                act_layer=act_layer,
            )
        )
        if use_se:
            squeeze = make_divisible(expanded_channels // 4, 8)
            layers.append(SqueezeExcite(expanded_channels, squeeze, nn.ReLU, nn.Hardsigmoid))
        layers.append(ConvNormAct(expanded_channels, out_channels, 1, norm_layer=norm_layer, act_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)
