"""Mobile inverted bottleneck (MBConv), the block of EfficientNet (Tan & Le, 2019, arXiv:1905.11946).

MBConv is MobileNetV2's inverted residual (Sandler et al., 2018, arXiv:1801.04381) with squeeze-and-
excitation added: a 1x1 conv expands the channels, a depthwise ``k x k`` conv filters each channel, SE
reweights the channels, and a linear 1x1 conv projects back to a narrow output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnkit.layers.conv import ConvNormAct
from cnnkit.layers.regularization import StochasticDepth
from cnnkit.layers.squeeze_excite import SqueezeExcite


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never more than 10% below ``value``.

    The rule of the MobileNet/EfficientNet reference implementations (TensorFlow ``slim`` and
    ``tpu/models/official/efficientnet``)::

        c = max(min_value, floor((value + divisor / 2) / divisor) * divisor)
        if c < 0.9 * value: c += divisor

    Multiples of 8 keep the channel counts friendly to vectorised kernels when a width multiplier scales
    the network.

    Args:
        value: the unrounded channel count, e.g. ``32 * width_mult``.
        divisor: the multiple to round to.
        min_value: lower bound of the result (default ``divisor``).

    Returns:
        The rounded channel count.

    Example:
        >>> make_divisible(32 * 1.1), make_divisible(112 * 1.4), make_divisible(3.0)
        (32, 160, 8)
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation and stochastic depth.

    ``y = x + drop_path(project(se(depthwise(expand(x)))))`` when ``stride == 1`` and the channels are
    unchanged, else ``y = project(se(depthwise(expand(x))))``. Expand, depthwise and project are
    :class:`ConvNormAct` (the projection has no activation: a linear bottleneck). Children are named like
    torchvision's ``MBConv`` (``block.0`` ... ``block.3``, ``stochastic_depth``; no ``block`` entry for
    the expansion when ``expand_ratio`` gives ``in_channels`` back), so ``state_dict`` keys match.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: depthwise kernel ``k``.
        stride: depthwise stride, 1 or 2.
        expand_ratio: hidden channels ``make_divisible(C_in * expand_ratio, 8)``.
        se_ratio: SE bottleneck ``max(1, int(C_in * se_ratio))`` (relative to the *input* channels, as in
            the paper); ``0`` leaves SE out.
        drop_path: stochastic-depth probability of the residual branch (row mode).
        norm_layer: normalization factory called with a channel count.
        act_layer: activation of the expansion, depthwise and SE layers (EfficientNet: SiLU, "swish").

    Shape:
        - Input: ``(N, C_in, H, W)``
        - Output: ``(N, C_out, H_out, W_out)``, ``H_out = ceil(H / stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6.0,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        self.use_residual = stride == 1 and in_channels == out_channels
        hidden = make_divisible(in_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers.append(ConvNormAct(in_channels, hidden, 1, norm_layer=norm_layer, act_layer=act_layer))
        layers.append(
            ConvNormAct(
                hidden, hidden, kernel_size, stride, groups=hidden, norm_layer=norm_layer, act_layer=act_layer
            )
        )
        if se_ratio > 0:
            layers.append(SqueezeExcite(hidden, max(1, int(in_channels * se_ratio)), act_layer=act_layer))
        layers.append(ConvNormAct(hidden, out_channels, 1, norm_layer=norm_layer, act_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_path, "row")
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            out = self.stochastic_depth(out)
            out += x  # in place (as torchvision): one activation-sized allocation less per block
        return out
