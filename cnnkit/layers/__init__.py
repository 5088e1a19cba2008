"""Torch building blocks shared by the model zoo and the task heads."""

from cnnkit.layers.conv import ConvNormAct, DepthwiseSeparableConv
from cnnkit.layers.norm import LayerNorm2d
from cnnkit.layers.regularization import StochasticDepth
from cnnkit.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "LayerNorm2d",
    "SqueezeExcite",
    "StochasticDepth",
]
