"""EfficientNet B0-B7 and compound scaling (Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", arXiv:1905.11946).

The paper's two ideas, in the order this file builds them:

1. A baseline found by architecture search, EfficientNet-B0 (paper Table 1): a 3x3 stem, seven stages of
   MBConv blocks (:class:`cnnkit.layers.MBConv`: expand, depthwise, squeeze-excite, project), a 1x1 head
   conv to 1280 channels, global pooling, dropout and a linear classifier.
2. Compound scaling (paper eq. 3, the reference page's "EfficientNet" section): one coefficient ``phi``
   scales depth by ``alpha^phi``, width by ``beta^phi`` and resolution by ``gamma^phi`` with
   ``alpha * beta^2 * gamma^2 ~ 2``, so FLOPs grow by about ``2^phi``. :func:`compound_scale` gives the
   multipliers and :func:`efficientnet` builds the scaled network.

The published B1-B7 use hand-rounded coefficients from the authors' released code (see ``_VARIANTS``),
not exactly ``alpha^phi``; the named builders keep them so torchvision's weights load.

Module names follow torchvision's ``efficientnet_b*``: ``features.0`` stem, ``features.1`` ...
``features.7`` stages, ``features.8`` head conv, ``classifier.1`` linear.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn

from cnnkit.geometry import compound_scaling
from cnnkit.layers import ConvNormAct, MBConv, make_divisible
from cnnkit.models.base import ClassifierModel, FeatureInfo
from cnnkit.models.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

PAPER = "Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019 (arXiv:1905.11946)"
BASE_RESOLUTION = 224


@dataclass(frozen=True)
class StageConfig:
    """One row of the paper's Table 1: a stage of ``num_layers`` identical MBConv blocks.

    Attributes:
        expand_ratio: MBConv expansion (1 or 6).
        kernel: depthwise kernel size.
        stride: stride of the stage's first block (the others use 1).
        in_channels: channels entering the stage.
        out_channels: channels of every block's output.
        num_layers: number of blocks.
    """

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    num_layers: int

    def scaled(self, width_mult: float, depth_mult: float) -> StageConfig:
        """The stage with channels rounded to multiples of 8 and the layer count rounded up.

        ``channels = make_divisible(channels * width_mult, 8)``, ``layers = ceil(layers * depth_mult)``
        (the rounding of the paper's released code).

        Args:
            width_mult: channel multiplier.
            depth_mult: layer-count multiplier.

        Returns:
            A new :class:`StageConfig`; kernel, stride and expansion are unchanged.
        """
        return replace(
            self,
            in_channels=make_divisible(self.in_channels * width_mult, 8),
            out_channels=make_divisible(self.out_channels * width_mult, 8),
            num_layers=math.ceil(self.num_layers * depth_mult),
        )


# EfficientNet-B0, paper Table 1 (stages 2-8; stage 1 is the stem, stage 9 the head).
B0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(1, 3, 1, 32, 16, 1),
    StageConfig(6, 3, 2, 16, 24, 2),
    StageConfig(6, 5, 2, 24, 40, 2),
    StageConfig(6, 3, 2, 40, 80, 3),
    StageConfig(6, 5, 1, 80, 112, 3),
    StageConfig(6, 5, 2, 112, 192, 4),
    StageConfig(6, 3, 1, 192, 320, 1),
)


class EfficientNet(ClassifierModel):
    """EfficientNet: stem, MBConv stages, 1x1 head conv, pooling, dropout, linear classifier.

    Args:
        width_mult: channel multiplier (channels rounded to multiples of 8).
        depth_mult: layer-count multiplier (rounded up per stage).
        drop_rate: dropout before the classifier (torchvision's ``dropout``).
        drop_path_rate: stochastic depth of the last block; block ``i`` of ``n`` drops its residual
            branch with probability ``drop_path_rate * i / n`` (torchvision's ``stochastic_depth_prob``).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels of the stem conv.
        norm_layer: normalization factory called with a channel count (default ``BatchNorm2d``).
        stages: the baseline stage table before scaling (default B0's, paper Table 1).

    Shape:
        - Input: ``(N, in_chans, H, W)``
        - Output: ``(N, num_classes)``; ``forward_features``: ``(N, num_features, ceil(H/32), ceil(W/32))``.
    """

    classifier_name = "classifier.1"

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.2,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm_layer: Callable[[int], nn.Module] | None = None,
        stages: Sequence[StageConfig] = B0_STAGES,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        stages = [stage.scaled(width_mult, depth_mult) for stage in stages]

        stem = ConvNormAct(in_chans, stages[0].in_channels, 3, 2, norm_layer=norm_layer, act_layer=nn.SiLU)
        layers: list[nn.Module] = [stem]
        channels, reductions = [stages[0].in_channels], [2]
        total_blocks = sum(stage.num_layers for stage in stages)
        block_index = 0
        for stage in stages:
            blocks: list[nn.Module] = []
            for j in range(stage.num_layers):
                blocks.append(
                    MBConv(
                        stage.in_channels if j == 0 else stage.out_channels,
                        stage.out_channels,
                        stage.kernel,
                        stage.stride if j == 0 else 1,
                        expand_ratio=stage.expand_ratio,
                        drop_path=drop_path_rate * block_index / total_blocks,
                        norm_layer=norm_layer,
                    )
                )
                block_index += 1
            layers.append(nn.Sequential(*blocks))
            channels.append(stage.out_channels)
            reductions.append(reductions[-1] * stage.stride)
        head_channels = 4 * stages[-1].out_channels
        layers.append(
            ConvNormAct(stages[-1].out_channels, head_channels, 1, norm_layer=norm_layer, act_layer=nn.SiLU)
        )
        channels.append(head_channels)
        reductions.append(reductions[-1])

        # One map per reduction: the output of the last layer before the next stride-2 block.
        self._stage_ends = tuple(
            i for i in range(len(layers)) if i + 1 == len(layers) or reductions[i + 1] != reductions[i]
        )
        self.feature_info = FeatureInfo(
            dict(num_chs=channels[i], reduction=reductions[i], module=f"features.{i}")
            for i in self._stage_ends
        )

        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate, inplace=True),
            nn.Linear(head_channels, num_classes) if num_classes > 0 else nn.Identity(),
        )
        self.num_classes = num_classes
        self.num_features = head_channels
        self.apply(_init_weights)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps at reductions 2, 4, 8, 16 and 32 (the last after the head conv), as ``feature_info``."""
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._stage_ends:
                maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and head conv: ``(N, num_features, H/32, W/32)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, dropout, linear; ``pre_logits`` returns the pooled ``(N, num_features)``."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``classifier.1`` by a new linear layer (initialised like the original) or an identity."""
        super().reset_classifier(num_classes)
        _init_weights(self.classifier[1])

    def head_modules(self) -> list[str]:
        """Dropout and linear classifier (the pooling has no parameters and is not called by features)."""
        return ["classifier"]


def _init_weights(module: nn.Module) -> None:
    # torchvision's (and the reference code's) scheme: He-normal fan-out convs, unit norms, and a
    # uniform classifier with range 1/sqrt(num_classes).
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        bound = 1.0 / math.sqrt(module.out_features)
        nn.init.uniform_(module.weight, -bound, bound)
        nn.init.zeros_(module.bias)


class CompoundScale(NamedTuple):
    """Multipliers of :func:`compound_scale` and the input size they give.

    Attributes:
        depth: layer-count multiplier ``alpha^phi``.
        width: channel multiplier ``beta^phi``.
        resolution: input-size multiplier ``gamma^phi``.
        flops: FLOPs multiplier ``(alpha * beta^2 * gamma^2)^phi``.
        image_size: input side in pixels, ``round(224 * gamma^phi)``.
    """

    depth: float
    width: float
    resolution: float
    flops: float
    image_size: int


def compound_scale(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15) -> CompoundScale:
    """EfficientNet's compound scaling multipliers for coefficient ``phi``, with B0's input size scaled.

    Formula (paper eq. 3; reference page, "EfficientNet"; computed by
    :func:`cnnkit.geometry.compound_scaling`)::

        depth = alpha^phi,  width = beta^phi,  resolution = gamma^phi,
        s.t. alpha * beta^2 * gamma^2 ~ 2,  image_size = round(224 * gamma^phi)

    ``alpha = 1.2, beta = 1.1, gamma = 1.15`` are the paper's grid-search values for B0.

    Args:
        phi: compound coefficient (0 is B0; negative scales down).
        alpha: depth base.
        beta: width base.
        gamma: resolution base.

    Returns:
        A :class:`CompoundScale`.

    Example:
        >>> s = compound_scale(1)
        >>> round(s.depth, 2), round(s.width, 2), s.image_size
        (1.2, 1.1, 258)
    """
    multipliers = compound_scaling(phi, alpha, beta, gamma)
    return CompoundScale(*multipliers, image_size=round(BASE_RESOLUTION * multipliers.resolution))


def efficientnet(
    phi: float,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    **kwargs: Any,
) -> EfficientNet:
    """Build B0 scaled by the compound coefficient ``phi`` (see :func:`compound_scale`).

    Depth multiplies each stage's layer count and rounds up; width multiplies every channel count and
    rounds to a multiple of 8 (:func:`cnnkit.layers.make_divisible`); the resolution is recorded in
    ``model.default_cfg["input_size"]``. ``phi=0`` is exactly EfficientNet-B0's architecture. The named
    ``efficientnet_b1`` ... ``b7`` use the published, hand-rounded coefficients instead.

    Args:
        phi: compound coefficient.
        alpha / beta / gamma: depth / width / resolution bases.
        num_classes: classifier outputs.
        in_chans: input channels.
        **kwargs: further :class:`EfficientNet` options (``drop_rate``, ``drop_path_rate``, ``norm_layer``);
            dropout and stochastic depth stay at B0's 0.2 unless given (the paper raises dropout from 0.2
            for B0 to 0.5 for B7).

    Returns:
        The scaled :class:`EfficientNet`, with ``default_cfg`` set.

    Example:
        >>> model = efficientnet(phi=1)
        >>> model.default_cfg["input_size"]
        (3, 258, 258)
    """
    scale = compound_scale(phi, alpha, beta, gamma)
    model = EfficientNet(scale.width, scale.depth, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.default_cfg = {
        "architecture": f"efficientnet(phi={phi}, alpha={alpha}, beta={beta}, gamma={gamma})",
        "input_size": (in_chans, scale.image_size, scale.image_size),
        "min_input_size": (in_chans, 32, 32),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "num_classes": num_classes,
        "paper": PAPER,
        "torchvision": None,
        "first_conv": "features.0.0",
        "classifier": "classifier.1",
    }
    return model


# (width_mult, depth_mult, dropout) of the published variants; the resolutions are in the cards below.
_VARIANTS: dict[str, tuple[float, float, float]] = {
    "efficientnet_b0": (1.0, 1.0, 0.2),
    "efficientnet_b1": (1.0, 1.1, 0.2),
    "efficientnet_b2": (1.1, 1.2, 0.3),
    "efficientnet_b3": (1.2, 1.4, 0.3),
    "efficientnet_b4": (1.4, 1.8, 0.4),
    "efficientnet_b5": (1.6, 2.2, 0.4),
    "efficientnet_b6": (1.8, 2.6, 0.5),
    "efficientnet_b7": (2.0, 3.1, 0.5),
}

# B5-B7's weights were trained (TensorFlow) with these BatchNorm settings; torchvision builds them so.
_TF_BATCHNORM = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)


def _efficientnet_variant(name: str, num_classes: int, in_chans: int, **kwargs: Any) -> EfficientNet:
    width_mult, depth_mult, drop_rate = _VARIANTS[name]
    options: dict[str, Any] = {"drop_rate": drop_rate}
    if name in ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7"):
        options["norm_layer"] = _TF_BATCHNORM
    options.update(kwargs)
    return EfficientNet(width_mult, depth_mult, num_classes=num_classes, in_chans=in_chans, **options)


_CARD = dict(
    min_input_size=(3, 32, 32),
    paper=PAPER,
    first_conv="features.0.0",
    classifier="classifier.1",
)


@register_model(
    params=5_288_548,
    macs=385_814_752,
    input_size=(3, 224, 224),
    torchvision="efficientnet_b0",
    weights="EfficientNet_B0_Weights",
    **_CARD,
)
def efficientnet_b0(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B0, the searched baseline (width 1.0, depth 1.0, 224 px, dropout 0.2)."""
    return _efficientnet_variant("efficientnet_b0", num_classes, in_chans, **kwargs)


@register_model(
    params=7_794_184,
    macs=686_802_832,
    input_size=(3, 240, 240),
    torchvision="efficientnet_b1",
    weights="EfficientNet_B1_Weights",
    **_CARD,
)
def efficientnet_b1(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B1 (width 1.0, depth 1.1, 240 px, dropout 0.2)."""
    return _efficientnet_variant("efficientnet_b1", num_classes, in_chans, **kwargs)


@register_model(
    params=9_109_994,
    macs=1_087_529_456,
    input_size=(3, 288, 288),
    torchvision="efficientnet_b2",
    weights="EfficientNet_B2_Weights",
    **_CARD,
)
def efficientnet_b2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B2 (width 1.1, depth 1.2, 288 px as torchvision's weights; paper 260; dropout 0.3)."""
    return _efficientnet_variant("efficientnet_b2", num_classes, in_chans, **kwargs)


@register_model(
    params=12_233_232,
    macs=1_827_141_392,
    input_size=(3, 300, 300),
    torchvision="efficientnet_b3",
    weights="EfficientNet_B3_Weights",
    **_CARD,
)
def efficientnet_b3(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B3 (width 1.2, depth 1.4, 300 px, dropout 0.3)."""
    return _efficientnet_variant("efficientnet_b3", num_classes, in_chans, **kwargs)


@register_model(
    params=19_341_616,
    macs=4_393_771_024,
    input_size=(3, 380, 380),
    torchvision="efficientnet_b4",
    weights="EfficientNet_B4_Weights",
    **_CARD,
)
def efficientnet_b4(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B4 (width 1.4, depth 1.8, 380 px, dropout 0.4)."""
    return _efficientnet_variant("efficientnet_b4", num_classes, in_chans, **kwargs)


@register_model(
    params=30_389_784,
    macs=10_266_384_752,
    input_size=(3, 456, 456),
    torchvision="efficientnet_b5",
    weights="EfficientNet_B5_Weights",
    **_CARD,
)
def efficientnet_b5(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B5 (width 1.6, depth 2.2, 456 px, dropout 0.4; BatchNorm eps 1e-3, momentum 0.01)."""
    return _efficientnet_variant("efficientnet_b5", num_classes, in_chans, **kwargs)


@register_model(
    params=43_040_704,
    macs=19_067_593_536,
    input_size=(3, 528, 528),
    torchvision="efficientnet_b6",
    weights="EfficientNet_B6_Weights",
    **_CARD,
)
def efficientnet_b6(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B6 (width 1.8, depth 2.6, 528 px, dropout 0.5; BatchNorm eps 1e-3, momentum 0.01)."""
    return _efficientnet_variant("efficientnet_b6", num_classes, in_chans, **kwargs)


@register_model(
    params=66_347_960,
    macs=37_745_884_192,
    input_size=(3, 600, 600),
    torchvision="efficientnet_b7",
    weights="EfficientNet_B7_Weights",
    **_CARD,
)
def efficientnet_b7(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B7 (width 2.0, depth 3.1, 600 px, dropout 0.5; BatchNorm eps 1e-3, momentum 0.01)."""
    return _efficientnet_variant("efficientnet_b7", num_classes, in_chans, **kwargs)
