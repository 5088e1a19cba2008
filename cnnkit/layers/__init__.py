"""Torch building blocks shared by the model zoo and the task heads."""

from cnnkit.layers.aspp import ASPP, ASPPPooling
from cnnkit.layers.conv import ConvNormAct, DepthwiseSeparableConv
from cnnkit.layers.convnext_block import ConvNeXtBlock, Permute
from cnnkit.layers.dense import DenseBlock, DenseLayer, Transition
from cnnkit.layers.fpn import FPN, PAN, LastLevelP6P7
from cnnkit.layers.inception import (
    BasicConv,
    InceptionA,
    InceptionB,
    InceptionBlock,
    InceptionC,
    InceptionD,
    InceptionE,
)
from cnnkit.layers.mbconv import MBConv, make_divisible
from cnnkit.layers.mobile import InvertedResidual, MobileNetV3Block
from cnnkit.layers.norm import LayerNorm2d
from cnnkit.layers.regularization import StochasticDepth
from cnnkit.layers.residual import BasicBlock, Bottleneck
from cnnkit.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "ASPP",
    "ASPPPooling",
    "BasicBlock",
    "Bottleneck",
    "ConvNeXtBlock",
    "DenseBlock",
    "DenseLayer",
    "FPN",
    "LastLevelP6P7",
    "PAN",
    "MBConv",
    "Permute",
    "make_divisible",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "LayerNorm2d",
    "BasicConv",
    "InceptionA",
    "InceptionB",
    "InceptionBlock",
    "InceptionC",
    "InceptionD",
    "InceptionE",
    "InvertedResidual",
    "MobileNetV3Block",
    "SqueezeExcite",
    "StochasticDepth",
    "Transition",
]
