"""DeepLabV3: a dilated ResNet, Atrous Spatial Pyramid Pooling, a per-pixel classifier, bilinear upsampling.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017 (arXiv:1706.05587); the
reference page: "DeepLab: atrous (dilated) convolution for larger receptive field without downsampling".

    backbone (output stride 8 or 16) -> ASPP (rates r) -> 3x3 conv -> BN -> ReLU -> 1x1 conv -> upsample to (H, W)

The output stride ``os`` is the ratio of input size to the last map's size. A ResNet reaches 32; DeepLabV3
keeps 16 by replacing the stride of layer4 with dilation 2, or 8 by also replacing layer3's (dilations 2 and
4): the maps keep more detail at more compute. The atrous rates scale with it, ``(6, 12, 18)`` at ``os=16``
and ``(12, 24, 36)`` at ``os=8`` (paper, section 4.1 and table 4).

With the defaults of :func:`deeplabv3_resnet50` (``os=8``, rates ``(12, 24, 36)``, 256 channels) the parameter
names and shapes equal ``torchvision.models.segmentation.deeplabv3_resnet50(aux_loss=False)``: its
``state_dict`` loads with ``strict=True`` and the outputs agree (tested), with ``aux_loss=True`` on both sides
too (the auxiliary head of :mod:`cnnkit.tasks.segmentation.fcn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.errors import ConfigError
from cnnkit.layers.aspp import ASPP
from cnnkit.layers.conv import ConvNormAct
from cnnkit.models.registry import model_options, register_model
from cnnkit.tasks.segmentation.backbone import build_backbone
from cnnkit.tasks.segmentation.fcn import aux_head, with_aux

DILATION = {8: (False, True, True), 16: (False, False, True)}
ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def dilation_options(backbone: str, output_stride: int) -> dict[str, Any]:
    """The backbone builder's options that end its features at ``output_stride`` by dilation.

    ResNet-family builders take ``replace_stride_with_dilation`` (stride 8 or 16); MobileNetV3 takes
    ``output_stride`` (16 is torchvision's ``deeplabv3_mobilenet_v3_large``; 8 also dilates the stage
    before); a builder with only ``dilated`` reaches stride 16.

    Raises:
        ConfigError: a backbone with neither option, or an output stride it cannot reach.
    """
    options = model_options(backbone)
    if options is None or "replace_stride_with_dilation" in options:
        return {"replace_stride_with_dilation": DILATION[output_stride]}
    if "output_stride" in options:
        return {"output_stride": output_stride}
    if "dilated" in options:
        if output_stride != 16:
            raise ConfigError(
                f"backbone {backbone!r} dilates its last stage only: output_stride must be 16, got {output_stride}"
            )
        return {"dilated": True}
    raise ConfigError(
        f"backbone {backbone!r} cannot trade strides for dilation; DeepLabV3 needs a ResNet-family "
        "(replace_stride_with_dilation) or MobileNetV3 (dilated) backbone"
    )


class DeepLabV3(nn.Module):
    """DeepLabV3 on a backbone that trades strides for dilation (the ResNet family; MobileNetV3 at stride 16).

    Args:
        backbone: registry name of the encoder, e.g. ``"resnet50"``.
        num_classes: output channels.
        in_chans: input image channels.
        output_stride: 8 or 16 (see the module docstring).
        atrous_rates: rates of the ASPP's 3x3 branches; default ``(12, 24, 36)`` at stride 8, ``(6, 12, 18)``
            at stride 16.
        aspp_channels: channels of the ASPP branches and of the head (256 in the paper).
        dropout: dropout after the ASPP projection.
        aux_loss: add the auxiliary head on backbone stage ``aux_stage`` (see :mod:`cnnkit.tasks.segmentation.fcn`).
        aux_stage: ``feature_info`` index of the stage it scores (``-2``: torchvision's ``layer3``).
        **backbone_kwargs: further options of the backbone's builder.

    Shape:
        - Input: ``(N, in_chans, H, W)``; in training mode ``N >= 2`` (BatchNorm of the image-pooling branch)
        - Output: ``(N, num_classes, H, W)`` logits; the backbone map is ``ceil``-rounded ``H / output_stride``;
          in training mode with ``aux_loss`` a pair ``(logits, aux_logits)`` of that shape

    Raises:
        ConfigError: an output stride other than 8 or 16, or a backbone without dilation support.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 21,
        in_chans: int = 3,
        output_stride: int = 8,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        dropout: float = 0.5,
        aux_loss: bool = False,
        aux_stage: int = -2,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if output_stride not in DILATION:
            raise ConfigError(f"output_stride must be 8 or 16, got {output_stride}")
        self.backbone, info = build_backbone(
            backbone, in_chans, **dilation_options(backbone, output_stride), **backbone_kwargs
        )
        if info[-1]["reduction"] != output_stride:
            raise ConfigError(
                f"backbone {backbone!r} ends at reduction {info[-1]['reduction']}, not output_stride={output_stride}"
            )
        self.feature_info = info
        self.output_stride = output_stride
        rates = tuple(atrous_rates) if atrous_rates is not None else ATROUS_RATES[output_stride]
        self.classifier = nn.Sequential(
            ASPP(info[-1]["num_chs"], rates, aspp_channels, dropout),
            *ConvNormAct(aspp_channels, aspp_channels, 3),
            nn.Conv2d(aspp_channels, num_classes, 1),
        )
        self.aux_stage, self.aux_classifier = (
            aux_head(info, aux_stage, num_classes) if aux_loss else (None, None)
        )
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        features = self.backbone.forward_intermediates(x)
        logits = F.interpolate(
            self.classifier(features[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return with_aux(logits, features, self.aux_classifier, self.aux_stage, self.training)


class DeepLabV3Plus(DeepLabV3):
    """DeepLabV3+ (Chen et al., ECCV 2018, arXiv:1802.02611): DeepLabV3 with a decoder that restores detail.

    DeepLabV3's logits come from the stride-16 (or 8) map, so thin structures and object edges are only as
    sharp as bilinear upsampling from that grid. The V3+ decoder merges an early, high-resolution map::

        low = 1x1 conv -> BN -> ReLU (low-level stage, to low_level_channels)      # 48 in the paper
        y   = upsample(ASPP(backbone map)) to low's size, concat low
        y   = [3x3 conv -> BN -> ReLU] x 2 -> 1x1 conv -> upsample to (H, W)

    The paper takes the stride-4 map (``low_level_reduction=4``); a smaller reduction gives sharper edges at
    more compute.

    Args:
        backbone: registry name of the encoder.
        num_classes: output channels.
        in_chans: input image channels.
        output_stride: 8 or 16 (16 in the paper).
        low_level_reduction: reduction of the backbone stage the decoder merges (a ``feature_info`` entry).
        low_level_channels: channels that stage is projected to.
        **kwargs: further :class:`DeepLabV3` options (``atrous_rates``, ``aspp_channels``, ``dropout``,
            ``aux_loss``, ``aux_stage``) and backbone options.

    Shape:
        - Input: ``(N, in_chans, H, W)``; in training mode ``N >= 2``
        - Output: ``(N, num_classes, H, W)`` logits

    Raises:
        ConfigError: as :class:`DeepLabV3`, or no backbone stage at ``low_level_reduction``.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 21,
        in_chans: int = 3,
        output_stride: int = 16,
        low_level_reduction: int = 4,
        low_level_channels: int = 48,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes, in_chans, output_stride, **kwargs)
        reductions = self.feature_info.reduction()
        if low_level_reduction not in reductions[:-1]:
            raise ConfigError(
                f"backbone {backbone!r} has no stage at reduction {low_level_reduction} before its last "
                f"(stages: {reductions})"
            )
        self.low_level = reductions.index(low_level_reduction)
        width = self.classifier[0].out_channels
        self.classifier = self.classifier[:1]  # the ASPP; the decoder takes over from it
        self.project = ConvNormAct(self.feature_info[self.low_level]["num_chs"], low_level_channels, 1)
        self.decoder = nn.Sequential(
            ConvNormAct(width + low_level_channels, width, 3),
            ConvNormAct(width, width, 3),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        features = self.backbone.forward_intermediates(x)
        low = self.project(features[self.low_level])
        context = F.interpolate(
            self.classifier(features[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        logits = self.decoder(torch.cat([context, low], dim=1))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return with_aux(logits, features, self.aux_classifier, self.aux_stage, self.training)


def deeplabv3_resnet50(num_classes: int = 21, in_chans: int = 3, **kwargs: Any) -> DeepLabV3:
    """DeepLabV3 with torchvision's layout: ResNet-50 at output stride 8, ASPP rates ``(12, 24, 36)``.

    ``model.load_state_dict(torchvision.models.segmentation.deeplabv3_resnet50(aux_loss=False).state_dict())``
    works, and both give the same logits; ``aux_loss=True`` on both sides adds the same ``aux_classifier``.

    Args:
        num_classes: output channels (21 for Pascal VOC).
        in_chans: input image channels.
        **kwargs: further :class:`DeepLabV3` options.

    Returns:
        The model.
    """
    return DeepLabV3("resnet50", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    task="segmentation",
    input_size=(3, 512, 512),
    paper="Chen et al., 2017, Rethinking Atrous Convolution for Semantic Image Segmentation",
)
def deeplabv3(
    num_classes: int = 21, backbone: str = "resnet50", in_chans: int = 3, **kwargs: Any
) -> DeepLabV3:
    """DeepLabV3 (atrous convolution, ASPP) on a registered ``backbone`` (see :class:`DeepLabV3`).

    Args:
        num_classes: output channels, background included.
        backbone: registered classifier of the encoder.
        in_chans: image channels.
        **kwargs: :class:`DeepLabV3` options (``output_stride``...) and the backbone's (``weights=``).
    """
    return DeepLabV3(backbone, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    task="segmentation",
    input_size=(3, 512, 512),
    paper="Chen et al., 2018, Encoder-Decoder with Atrous Separable Convolution (DeepLabV3+)",
)
def deeplabv3plus(
    num_classes: int = 21, backbone: str = "resnet50", in_chans: int = 3, **kwargs: Any
) -> DeepLabV3Plus:
    """DeepLabV3+ (DeepLabV3 with a stride-4 decoder) on a registered ``backbone`` (see
    :class:`DeepLabV3Plus`).

    Args:
        num_classes: output channels, background included.
        backbone: registered classifier of the encoder.
        in_chans: image channels.
        **kwargs: :class:`DeepLabV3Plus` options and the backbone's (``weights=``).
    """
    return DeepLabV3Plus(backbone, num_classes=num_classes, in_chans=in_chans, **kwargs)
