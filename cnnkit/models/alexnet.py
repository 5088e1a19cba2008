"""AlexNet: five convolutions with ReLU and overlapping max pools, then three fully connected layers with dropout.

Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural Networks",
NeurIPS 2012; the single-tower layout of Krizhevsky, "One weird trick for parallelizing convolutional neural
networks", 2014 (arXiv:1404.5997), which torchvision implements::

    conv 11x11, 64, stride 4 -> ReLU -> max pool 3x3, stride 2
    conv 5x5, 192           -> ReLU -> max pool 3x3, stride 2
    conv 3x3, 384 -> ReLU -> conv 3x3, 256 -> ReLU -> conv 3x3, 256 -> ReLU -> max pool 3x3, stride 2
    adaptive average pool to 6x6 -> dropout -> FC 4096 -> ReLU -> dropout -> FC 4096 -> ReLU -> FC classes

Module names equal torchvision's ``alexnet`` (``features.<i>``, ``classifier.<i>``), so its ``state_dict``
loads with ``strict=True``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cnnkit.models.base import FeatureInfo, SequentialConvNet
from cnnkit.models.registry import register_model

PAPER = (
    "Krizhevsky, Sutskever and Hinton, ImageNet Classification with Deep Convolutional Neural Networks, "
    "NeurIPS 2012; single-tower variant: Krizhevsky, arXiv:1404.5997"
)


class AlexNet(SequentialConvNet):
    """AlexNet: ``features`` (five convolutions, three max pools), ``avgpool`` to 6x6, ``classifier``.

    ``feature_info`` holds the activation after conv1 (reduction 4), conv2 (8) and conv5 (16), and the
    output of ``features`` (32). As in timm, ``num_features`` is the channel count of
    that last map (256) and ``head_hidden_size`` (4096) the width entering the last linear layer
    ``classifier.6``, which ``forward_head(x, pre_logits=True)`` returns.

    Args:
        num_classes: classifier outputs (0: ``forward`` returns the 4096 pre-logits).
        in_chans: input image channels.
        dropout: dropout probability before the first and second linear layers.

    Shape:
        - Input: ``(N, in_chans, H, W)`` with ``H, W >= 63``.
        - Output: ``(N, num_classes)``; ``forward_features``: ``(N, 256, 6, 6)`` at 224x224.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 256
        self.head_hidden_size = 4096
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        stages = ((1, 64, 4), (4, 192, 8), (11, 256, 16), (12, 256, 32))
        self.feature_info = FeatureInfo(
            dict(num_chs=c, reduction=r, module=f"features.{i}") for i, c, r in stages
        )
        self._stage_ends = frozenset(i for i, _, _ in stages)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity(),
        )


@register_model(
    params=61_100_840,
    macs=714_188_480,
    input_size=(3, 224, 224),
    min_input_size=(3, 63, 63),
    paper=PAPER,
    torchvision="alexnet",
    weights="AlexNet_Weights",
    first_conv="features.0",
    classifier="classifier.6",
)
def alexnet(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> AlexNet:
    """AlexNet (single-tower): 5 convolutions and 3 linear layers; 61.1M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`AlexNet` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return AlexNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
