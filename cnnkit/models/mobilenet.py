"""MobileNetV2 and MobileNetV3: networks of depthwise-separable inverted residual blocks.

MobileNetV2 (Sandler et al., 2018, arXiv:1801.04381) stacks :class:`~cnnkit.layers.mobile.InvertedResidual`
blocks (1x1 expand, 3x3 depthwise, linear 1x1 project) after a 3x3 stride-2 stem, then widens to 1280
channels with a 1x1 conv before global pooling. The reference page ("Depthwise Separable Convolutions"):
a depthwise ``k x k`` conv plus a pointwise conv costs about ``k^2`` times fewer parameters than a full
convolution. ``width_mult`` scales every layer's channels (rounded to multiples of 8).

MobileNetV3 (Howard et al., 2019, arXiv:1905.02244) keeps the block, adds squeeze-and-excitation and the
hard-swish activation where they pay off (found by architecture search), and moves the last 1x1 conv after
the pooling, into a two-layer classifier head. Large and Small differ in their block tables.

Module names follow torchvision's ``mobilenet_v2`` / ``mobilenet_v3_*`` so their weights load with
``strict=True``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from cnnkit.layers.conv import ConvNormAct
from cnnkit.layers.mbconv import make_divisible
from cnnkit.layers.mobile import InvertedResidual, MobileNetV3Block
from cnnkit.models.base import ClassifierModel, FeatureInfo
from cnnkit.models.registry import register_model

__all__ = [
    "BneckSetting",
    "MobileNetV2",
    "MobileNetV3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
]


def _init_weights(model: nn.Module) -> None:
    # torchvision's scheme for both versions: He (fan-out) convs, N(0, 0.01) linear layers.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _stage_info(features: nn.Sequential) -> FeatureInfo:
    """One entry per resolution: the last layer of ``features`` before the next stride-2 layer."""
    strides = [layer[0].stride[0] if isinstance(layer, ConvNormAct) else layer.stride for layer in features]
    info, reduction = FeatureInfo(), 1
    for i, layer in enumerate(features):
        reduction *= strides[i]
        if i + 1 == len(features) or strides[i + 1] > 1:
            info.append(dict(num_chs=layer.out_channels, reduction=reduction, module=f"features.{i}"))
    return info


def _run_stages(features: nn.Sequential, stage_ends: tuple[int, ...], x: torch.Tensor) -> list[torch.Tensor]:
    maps = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in stage_ends:
            maps.append(x)
    return maps


# MobileNetV2, paper Table 2: expansion t, output channels c, repeats n, stride s of the first repeat.
V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(ClassifierModel):
    """MobileNetV2.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        width_mult: channel multiplier ``alpha`` for every layer (the last conv only grows, never shrinks).
        round_nearest: channels are rounded to multiples of this (1 turns rounding off).
        dropout: dropout probability before the classifier.

    Shape:
        - Input: ``(N, in_chans, H, W)``
        - Output: ``(N, num_classes)``; feature maps at reductions 2, 4, 8, 16, 32 (16, 24, 32, 96, 1280
          channels at ``width_mult=1``).
    """

    classifier_name = "classifier.1"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult, round_nearest)
        last_channels = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers: list[nn.Module] = [ConvNormAct(in_chans, channels, 3, stride=2, act_layer=nn.ReLU6)]
        for t, c, n, s in V2_SETTING:
            out_channels = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                layers.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, expand_ratio=t))
                channels = out_channels
        layers.append(ConvNormAct(channels, last_channels, 1, act_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channels, num_classes))

        self.num_classes = num_classes
        self.num_features = last_channels
        self.feature_info = _stage_info(self.features)
        self._stage_ends = tuple(int(m.rsplit(".", 1)[1]) for m in self.feature_info.module_names())
        _init_weights(self)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Last map of each resolution (``features.1, .3, .6, .13, .18``), in ``feature_info`` order.

        Shape:
            - Input: ``(N, in_chans, H, W)``
            - Output: ``(N, C_i, ceil(H / r_i), ceil(W / r_i))`` for the ``feature_info`` entries.
        """
        return _run_stages(self.features, self._stage_ends, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the final 1x1 conv, ``(N, num_features, H / 32, W / 32)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pool, dropout, linear; ``pre_logits`` returns the pooled ``(N, num_features)`` features."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.classifier(x)

    def head_modules(self) -> list[str]:
        """The classifier (dropout and linear), which ``features_only`` drops."""
        return ["classifier"]


class BneckSetting(NamedTuple):
    """One row of the MobileNetV3 tables: a :class:`~cnnkit.layers.mobile.MobileNetV3Block`.

    Attributes:
        kernel: depthwise kernel size (paper column "Operator").
        expanded: expansion width ("exp size").
        out: output channels ("#out").
        use_se: squeeze-and-excitation ("SE").
        hard_swish: hard-swish instead of ReLU ("NL": HS / RE).
        stride: depthwise stride ("s").
    """

    kernel: int
    expanded: int
    out: int
    use_se: bool
    hard_swish: bool
    stride: int


# MobileNetV3-Large, paper Table 1 (input channels: the previous row's output, 16 for the first row).
V3_LARGE = (
    BneckSetting(3, 16, 16, False, False, 1),
    BneckSetting(3, 64, 24, False, False, 2),
    BneckSetting(3, 72, 24, False, False, 1),
    BneckSetting(5, 72, 40, True, False, 2),
    BneckSetting(5, 120, 40, True, False, 1),
    BneckSetting(5, 120, 40, True, False, 1),
    BneckSetting(3, 240, 80, False, True, 2),
    BneckSetting(3, 200, 80, False, True, 1),
    BneckSetting(3, 184, 80, False, True, 1),
    BneckSetting(3, 184, 80, False, True, 1),
    BneckSetting(3, 480, 112, True, True, 1),
    BneckSetting(3, 672, 112, True, True, 1),
    BneckSetting(5, 672, 160, True, True, 2),
    BneckSetting(5, 960, 160, True, True, 1),
    BneckSetting(5, 960, 160, True, True, 1),
)

# MobileNetV3-Small, paper Table 2.
V3_SMALL = (
    BneckSetting(3, 16, 16, True, False, 2),
    BneckSetting(3, 72, 24, False, False, 2),
    BneckSetting(3, 88, 24, False, False, 1),
    BneckSetting(5, 96, 40, True, True, 2),
    BneckSetting(5, 240, 40, True, True, 1),
    BneckSetting(5, 240, 40, True, True, 1),
    BneckSetting(5, 120, 48, True, True, 1),
    BneckSetting(5, 144, 48, True, True, 1),
    BneckSetting(5, 288, 96, True, True, 2),
    BneckSetting(5, 576, 96, True, True, 1),
    BneckSetting(5, 576, 96, True, True, 1),
)

# Block table and hidden width of the classifier head.
V3_ARCHS = {"large": (V3_LARGE, 1280), "small": (V3_SMALL, 1024)}


class MobileNetV3(ClassifierModel):
    """MobileNetV3 (Large or Small).

    The head is ``Linear(6 * C_last, hidden) -> hard-swish -> dropout -> Linear(hidden, num_classes)``
    on the pooled features (``hidden`` 1280 for Large, 1024 for Small). ``num_features`` is the pooled
    width ``6 * C_last`` (960 for Large, 576 for Small), which ``forward_features`` returns and
    ``forward_head(pre_logits=True)`` gives.

    Args:
        arch: ``"large"`` or ``"small"``.
        num_classes: classifier outputs.
        in_chans: input channels.
        width_mult: channel multiplier for every block (rounded to multiples of 8).
        reduced_tail: halve the channels of the last stage and of the head (torchvision's option for
            lighter segmentation backbones).
        dilated: replace the last stage's stride by dilation 2 (output stride 16, for dense prediction;
            the same as ``output_stride=16``).
        output_stride: 32 (the classifier), 16 or 8: the strides of the last stage (16), or of the last two
            (8), are replaced by dilation so that the features end at this reduction, as DeepLab does for
            ResNets (Chen et al., 2017, section 3.1): the stage that would start at reduction ``r`` keeps
            the resolution and dilates its depthwise convs by ``r / output_stride``.
        dropout: dropout probability in the head.

    Shape:
        - Input: ``(N, in_chans, H, W)``
        - Output: ``(N, num_classes)``; feature maps at reductions 2, 4, 8, 16, 32 (Large: 16, 24, 40,
          112, 960 channels; Small: 16, 16, 24, 48, 576), those past ``output_stride`` at it.
    """

    classifier_name = "classifier.3"

    def __init__(
        self,
        arch: str = "large",
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        reduced_tail: bool = False,
        dilated: bool = False,
        dropout: float = 0.2,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        if arch not in V3_ARCHS:
            raise ValueError(f"arch must be one of {sorted(V3_ARCHS)}, got {arch!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        output_stride = 16 if dilated and output_stride == 32 else output_stride
        table, hidden = V3_ARCHS[arch]
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        tail_divider = 2 if reduced_tail else 1

        def scaled(c: int) -> int:
            return make_divisible(c * width_mult, 8)

        # The last stage ("tail") starts at the last stride-2 row; with output stride 8 or 16 the rows from
        # the stage that would reach reduction 16 (or 32) on are dilated instead.
        tail = max(i for i, row in enumerate(table) if row.stride == 2)
        downsampling = [i for i, row in enumerate(table) if row.stride == 2]  # reductions 4, 8, 16, 32
        dilations = [1] * len(table)
        for start, reduction in zip(downsampling, (4, 8, 16, 32)):
            if reduction > output_stride:
                dilations[start:] = [reduction // output_stride] * (len(table) - start)
        channels = scaled(16)
        layers: list[nn.Module] = [
            ConvNormAct(in_chans, channels, 3, stride=2, norm_layer=norm_layer, act_layer=nn.Hardswish)
        ]
        for i, row in enumerate(table):
            expanded = row.expanded // tail_divider if i > tail else row.expanded
            out = row.out // tail_divider if i >= tail else row.out
            layers.append(
                MobileNetV3Block(
                    channels,
                    scaled(expanded),
                    scaled(out),
                    row.kernel,
                    row.stride,
                    dilation=dilations[i],
                    use_se=row.use_se,
                    act_layer=nn.Hardswish if row.hard_swish else nn.ReLU,
                    norm_layer=norm_layer,
                )
            )
            channels = scaled(out)
        self.num_features = 6 * channels
        layers.append(
            ConvNormAct(channels, self.num_features, 1, norm_layer=norm_layer, act_layer=nn.Hardswish)
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_hidden = scaled(hidden // tail_divider)
        self.drop_rate = dropout
        self.classifier = self._make_head(num_classes)

        self.num_classes = num_classes
        self.feature_info = _stage_info(self.features)
        self._stage_ends = tuple(int(m.rsplit(".", 1)[1]) for m in self.feature_info.module_names())
        _init_weights(self)

    def _make_head(self, num_classes: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(self.num_features, self.head_hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=self.drop_rate, inplace=True),
            nn.Linear(self.head_hidden, num_classes),
        )

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Last map of each resolution (the ``features`` entries named in ``feature_info``).

        Shape:
            - Input: ``(N, in_chans, H, W)``
            - Output: ``(N, C_i, ceil(H / r_i), ceil(W / r_i))`` for the ``feature_info`` entries.
        """
        return _run_stages(self.features, self._stage_ends, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the final 1x1 conv, ``(N, num_features, H / 32, W / 32)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pool, then the two-layer head; ``pre_logits`` returns the pooled ``(N, num_features)``."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        """New final linear layer ``classifier.3`` with ``num_classes`` outputs, keeping the hidden layer.

        ``0`` removes the whole head, hidden layer included, so the model returns the pooled
        ``(N, num_features)`` features, like ``forward_head(pre_logits=True)``.
        """
        self.num_classes = num_classes
        reference = self.features[0][0].weight
        if num_classes == 0:
            self.classifier = nn.Identity()
        elif isinstance(self.classifier, nn.Sequential):
            self.classifier[3] = nn.Linear(self.head_hidden, num_classes)
        else:
            self.classifier = self._make_head(num_classes)
        self.classifier.to(device=reference.device, dtype=reference.dtype)

    def head_modules(self) -> list[str]:
        """The two-layer classifier head, which ``features_only`` drops."""
        return ["classifier"]


_V2_PAPER = (
    "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018 (arXiv:1801.04381)"
)
_V3_PAPER = "Howard et al., Searching for MobileNetV3, ICCV 2019 (arXiv:1905.02244)"


@register_model(
    params=3_504_872,
    macs=300_774_272,
    input_size=(3, 224, 224),
    min_input_size=(3, 1, 1),
    paper=_V2_PAPER,
    torchvision="mobilenet_v2",
    weights="MobileNet_V2_Weights",
    first_conv="features.0.0",
    classifier="classifier.1",
)
def mobilenet_v2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MobileNetV2:
    """MobileNetV2 (width 1.0), like torchvision's ``mobilenet_v2``.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        **kwargs: :class:`MobileNetV2` options (``width_mult``, ``round_nearest``, ``dropout``).

    Returns:
        A :class:`MobileNetV2`.
    """
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    params=5_483_032,
    macs=216_589_760,
    input_size=(3, 224, 224),
    min_input_size=(3, 1, 1),
    paper=_V3_PAPER,
    torchvision="mobilenet_v3_large",
    weights="MobileNet_V3_Large_Weights",
    first_conv="features.0.0",
    classifier="classifier.3",
)
def mobilenet_v3_large(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MobileNetV3:
    """MobileNetV3-Large, like torchvision's ``mobilenet_v3_large``.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        **kwargs: :class:`MobileNetV3` options (``width_mult``, ``reduced_tail``, ``output_stride``, ``dilated``,
            ``dropout``).

    Returns:
        A :class:`MobileNetV3`.
    """
    return MobileNetV3("large", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    params=2_542_856,
    macs=56_510_400,
    input_size=(3, 224, 224),
    min_input_size=(3, 1, 1),
    paper=_V3_PAPER,
    torchvision="mobilenet_v3_small",
    weights="MobileNet_V3_Small_Weights",
    first_conv="features.0.0",
    classifier="classifier.3",
)
def mobilenet_v3_small(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MobileNetV3:
    """MobileNetV3-Small, like torchvision's ``mobilenet_v3_small``.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        **kwargs: :class:`MobileNetV3` options (``width_mult``, ``reduced_tail``, ``output_stride``, ``dilated``,
            ``dropout``).

    Returns:
        A :class:`MobileNetV3`.
    """
    return MobileNetV3("small", num_classes=num_classes, in_chans=in_chans, **kwargs)
