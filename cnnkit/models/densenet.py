"""DenseNet: dense blocks, where every layer sees the concatenated maps of all earlier layers.

Huang, Liu, van der Maaten and Weinberger, "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993). The page's formula ``x_l = H_l([x_0, x_1, ..., x_{l-1}])`` is
:class:`cnnkit.layers.DenseBlock`; the network (DenseNet-BC, table 1 of the paper)::

    stem:        7x7 conv, 2k channels (k = growth rate), stride 2 -> BN -> ReLU -> 3x3 max pool, stride 2
    block 1..4:  dense blocks of (6, 12, 24, 16) layers for DenseNet-121, each adding k channels
    transition:  between blocks, BN -> ReLU -> 1x1 conv halving the channels -> 2x2 average pool
    head:        BN -> ReLU -> global average pool -> fully connected

Module names equal torchvision's ``densenet*`` builders (``features.denseblock1.denselayer1.norm1`` ...), so
their ``state_dict`` loads with ``strict=True``. torchvision's published ``.pth`` files use an older key
spelling (``norm.1`` for ``norm1``) that torchvision's own builders rename while loading.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.layers.dense import DenseBlock, Transition
from cnnkit.models.base import ClassifierModel, FeatureInfo
from cnnkit.models.registry import register_model

PAPER = (
    "Huang, Liu, van der Maaten and Weinberger, Densely Connected Convolutional Networks, CVPR 2017 "
    "(arXiv:1608.06993)"
)


class DenseNet(ClassifierModel):
    """A DenseNet-BC: stem, four dense blocks joined by transitions, final norm, linear classifier.

    ``feature_info`` holds the stem activation (reduction 2), the output of dense blocks 1 to 3
    (reductions 4, 8, 16, before their transition) and the activated final map (reduction 32).

    Args:
        growth_rate: channels each dense layer adds (``k``).
        block_config: number of layers in each of the four dense blocks.
        num_init_features: channels of the stem convolution.
        bn_size: bottleneck width multiplier, ``bn_size * growth_rate`` channels in each 1x1 conv.
        drop_rate: dropout probability after each dense layer.
        num_classes: classifier outputs (0: ``forward`` returns pooled features).
        in_chans: input image channels.

    Shape:
        - Input: ``(N, in_chans, H, W)``
        - Output: ``(N, num_classes)``; ``forward_features``: ``(N, num_features, H / 32, W / 32)``.
    """

    classifier_name = "classifier"

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(block_config) != 4:
            raise ConfigError(f"a DenseNet has 4 dense blocks; got block_config={tuple(block_config)}")
        self.num_classes = num_classes
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(in_chans, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(num_init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        info = [dict(num_chs=num_init_features, reduction=2, module="features.relu0")]
        stage_ends = ["relu0"]
        channels, reduction = num_init_features, 4
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, channels, growth_rate, bn_size, drop_rate)
            layers[f"denseblock{i + 1}"] = block
            channels = block.out_channels
            if i < len(block_config) - 1:
                stage_ends.append(f"denseblock{i + 1}")
                info.append(dict(num_chs=channels, reduction=reduction, module=f"features.{stage_ends[-1]}"))
                layers[f"transition{i + 1}"] = Transition(channels, channels // 2)
                channels //= 2
                reduction *= 2
        layers["norm5"] = nn.BatchNorm2d(channels)
        info.append(dict(num_chs=channels, reduction=reduction, module="features.norm5"))
        self.features = nn.Sequential(layers)
        self.feature_info = FeatureInfo(info)
        self._stage_ends = frozenset(stage_ends)
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem activation, dense blocks 1-3 and the activated final map, in the order of ``feature_info``."""
        maps = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in self._stage_ends:
                maps.append(x)
        maps.append(F.relu(x))
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final map after ``norm5`` and ReLU, ``(N, num_features, H / 32, W / 32)``."""
        return F.relu(self.features(x), inplace=True)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and classify; ``pre_logits=True`` returns the pooled ``(N, num_features)``."""
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return x if pre_logits else self.classifier(x)


def _card(name: str, weights: str, params: int, macs: int) -> dict[str, Any]:
    return dict(
        params=params,
        macs=macs,
        input_size=(3, 224, 224),
        min_input_size=(3, 32, 32),
        paper=PAPER,
        torchvision=name,
        weights=weights,
        first_conv="features.conv0",
        classifier="classifier",
    )


@register_model(**_card("densenet121", "DenseNet121_Weights", 7_978_856, 2_834_161_664))
def densenet121(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-121: growth rate 32, blocks ``(6, 12, 24, 16)``; 8.0M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`DenseNet` options (``drop_rate``, ``bn_size``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("densenet161", "DenseNet161_Weights", 28_681_000, 7_727_907_072))
def densenet161(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-161: growth rate 48, blocks ``(6, 12, 36, 24)``, 96 stem channels; 28.7M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`DenseNet` options (``drop_rate``, ``bn_size``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return DenseNet(48, (6, 12, 36, 24), 96, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("densenet169", "DenseNet169_Weights", 14_149_480, 3_359_843_328))
def densenet169(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-169: growth rate 32, blocks ``(6, 12, 32, 32)``; 14.1M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`DenseNet` options (``drop_rate``, ``bn_size``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return DenseNet(32, (6, 12, 32, 32), 64, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("densenet201", "DenseNet201_Weights", 20_013_928, 4_291_365_888))
def densenet201(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-201: growth rate 32, blocks ``(6, 12, 48, 32)``; 20.0M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`DenseNet` options (``drop_rate``, ``bn_size``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return DenseNet(32, (6, 12, 48, 32), 64, num_classes=num_classes, in_chans=in_chans, **kwargs)
