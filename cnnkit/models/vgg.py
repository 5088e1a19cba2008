"""VGG: five stages of stacked 3x3 convolutions, each closed by a 2x2 max pool, then three fully connected layers.

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015
(arXiv:1409.1556). Two stacked 3x3 convolutions see a 5x5 window (the reference page's receptive-field
formula) with ``2 * 9 * C^2`` instead of ``25 * C^2`` weights and one more non-linearity.

The configurations of the paper's table 1, as convolutions per stage (widths 64, 128, 256, 512, 512)::

    vgg11 (A): 1, 1, 2, 2, 2      vgg13 (B): 2, 2, 2, 2, 2
    vgg16 (D): 2, 2, 3, 3, 3      vgg19 (E): 2, 2, 4, 4, 4

The ``_bn`` variants put a BatchNorm after every convolution. Module names equal torchvision's ``vgg*``
builders (``features.<i>``, ``classifier.<i>``), so their ``state_dict`` loads with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.models.base import FeatureInfo, SequentialConvNet
from cnnkit.models.registry import register_model

PAPER = (
    "Simonyan and Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, "
    "ICLR 2015 (arXiv:1409.1556)"
)
STAGE_WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_STAGE = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


class VGG(SequentialConvNet):
    """A VGG network: ``features`` (conv stages), ``avgpool`` to 7x7, ``classifier`` (three linear layers).

    ``feature_info`` holds the last activation of stages 2 to 5 (reductions 2, 4, 8, 16, before their max
    pool) and the output of ``features`` (reduction 32). As in timm, ``num_features`` is the channel count of
    that last map (512) and ``head_hidden_size`` (4096) the width entering the last linear layer
    ``classifier.6``, which ``forward_head(x, pre_logits=True)`` returns.

    Args:
        convs_per_stage: number of 3x3 convolutions in each of the five stages.
        batch_norm: put a BatchNorm after every convolution.
        num_classes: classifier outputs (0: ``forward`` returns the 4096 pre-logits).
        in_chans: input image channels.
        dropout: dropout probability before the second and third linear layers.

    Shape:
        - Input: ``(N, in_chans, H, W)`` with ``H, W >= 32``.
        - Output: ``(N, num_classes)``; ``forward_features``: ``(N, 512, H / 32, W / 32)``.
    """

    def __init__(
        self,
        convs_per_stage: Sequence[int],
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(convs_per_stage) != len(STAGE_WIDTHS):
            raise ConfigError(f"a VGG has 5 stages; got convs_per_stage={tuple(convs_per_stage)}")
        self.num_classes = num_classes
        self.num_features = 512
        self.head_hidden_size = 4096

        layers: list[nn.Module] = []
        info, stage_ends = [], []
        channels, reduction = in_chans, 1
        for stage, (width, n_convs) in enumerate(zip(STAGE_WIDTHS, convs_per_stage)):
            for _ in range(n_convs):
                layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            if stage > 0:
                stage_ends.append(len(layers) - 1)
                info.append(dict(num_chs=width, reduction=reduction, module=f"features.{stage_ends[-1]}"))
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            reduction *= 2
        stage_ends.append(len(layers) - 1)
        info.append(dict(num_chs=channels, reduction=reduction, module=f"features.{stage_ends[-1]}"))
        self.features = nn.Sequential(*layers)
        self.feature_info = FeatureInfo(info)
        self._stage_ends = frozenset(stage_ends)

        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity(),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


def _card(name: str, weights: str, params: int, macs: int) -> dict[str, Any]:
    return dict(
        params=params,
        macs=macs,
        input_size=(3, 224, 224),
        min_input_size=(3, 32, 32),
        paper=PAPER,
        torchvision=name,
        weights=weights,
        first_conv="features.0",
        classifier="classifier.6",
    )


@register_model(**_card("vgg11", "VGG11_Weights", 132_863_336, 7_609_090_048))
def vgg11(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-11 (configuration A): 8 convolutions and 3 linear layers; 132.9M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`VGG` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return VGG(CONVS_PER_STAGE["vgg11"], num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("vgg11_bn", "VGG11_BN_Weights", 132_868_840, 7_609_090_048))
def vgg11_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-11 with BatchNorm after every convolution; 132.9M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`VGG` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return VGG(
        CONVS_PER_STAGE["vgg11"], batch_norm=True, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(**_card("vgg13", "VGG13_Weights", 133_047_848, 11_308_466_176))
def vgg13(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-13 (configuration B): 10 convolutions and 3 linear layers; 133.0M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`VGG` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return VGG(CONVS_PER_STAGE["vgg13"], num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("vgg13_bn", "VGG13_BN_Weights", 133_053_736, 11_308_466_176))
def vgg13_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-13 with BatchNorm after every convolution; 133.1M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`VGG` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return VGG(
        CONVS_PER_STAGE["vgg13"], batch_norm=True, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(**_card("vgg16", "VGG16_Weights", 138_357_544, 15_470_264_320))
def vgg16(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-16 (configuration D): 13 convolutions and 3 linear layers; 138.4M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`VGG` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return VGG(CONVS_PER_STAGE["vgg16"], num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("vgg16_bn", "VGG16_BN_Weights", 138_365_992, 15_470_264_320))
def vgg16_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm after every convolution; 138.4M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`VGG` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return VGG(
        CONVS_PER_STAGE["vgg16"], batch_norm=True, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model(**_card("vgg19", "VGG19_Weights", 143_667_240, 19_632_062_464))
def vgg19(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-19 (configuration E): 16 convolutions and 3 linear layers; 143.7M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`VGG` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return VGG(CONVS_PER_STAGE["vgg19"], num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("vgg19_bn", "VGG19_BN_Weights", 143_678_248, 19_632_062_464))
def vgg19_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm after every convolution; 143.7M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`VGG` options (``dropout``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return VGG(
        CONVS_PER_STAGE["vgg19"], batch_norm=True, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
