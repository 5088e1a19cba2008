"""Fully convolutional network (FCN): a classifier's features scored per pixel by a 1x1 convolution.

Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
(arXiv:1411.4038); the reference page: "FCN: replace FC layers with 1x1 convs for dense prediction".

    backbone stages -> last map (N, C, H/r, W/r) -> classifier -> scores (N, K, H/r, W/r)
                    -> [+ 1x1 scores of earlier stages, after upsampling to their size]   (skips, FCN-16s/8s)
                    -> bilinear upsampling to (H, W)

``skips=0`` is FCN-32s on a stride-32 backbone; ``skips=1`` adds the scores of the stage before the last
(FCN-16s), ``skips=2`` those of the two stages before it (FCN-8s). As in the paper, the skip score layers
start at zero, so training begins from the single-scale net. The paper learns its final 2x upsamplings
(initialised as bilinear); here every upsampling is fixed bilinear interpolation, as torchvision's FCN.

``head_channels=None`` gives the paper's single 1x1 classifier; an integer gives torchvision's ``FCNHead``
(3x3 conv to ``head_channels``, BN, ReLU, dropout 0.1, 1x1 conv). :func:`fcn_resnet50` combines that head
with a ResNet-50 dilated to output stride 8, and then has the parameter names and shapes of
``torchvision.models.segmentation.fcn_resnet50(aux_loss=False)``: its ``state_dict`` loads with
``strict=True`` and the outputs agree (tested); with ``aux_loss=True`` both sides add the auxiliary head.

**Auxiliary head** (``aux_loss=True``, as torchvision's segmentation models and PSPNet's deep supervision):
an ``FCNHead`` (``in_channels // 4`` hidden channels) named ``aux_classifier`` scores an earlier backbone
stage (``aux_stage``, a ``feature_info`` index; ``-2``, torchvision's ``layer3``, by default). In training
mode the model then returns ``(logits, aux_logits)``, both at the input's size, and
:meth:`~cnnkit.tasks.segmentation.task.SegmentationTask.criterion` adds ``aux_weight`` times the loss of
the second (the convention of classifiers with auxiliary logits, e.g. GoogLeNet); in eval mode the branch
is skipped and the model returns the logits alone. The same helpers serve FCN, DeepLabV3 and the U-Net.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.errors import ConfigError
from cnnkit.layers.conv import ConvNormAct
from cnnkit.models.base import FeatureInfo
from cnnkit.models.registry import register_model
from cnnkit.tasks.segmentation.backbone import build_backbone


def fcn_head(
    in_channels: int, num_classes: int, head_channels: int | None = None, dropout: float = 0.1
) -> nn.Sequential:
    """The per-pixel classifier of an FCN.

    Args:
        in_channels: channels of the backbone map.
        num_classes: output channels.
        head_channels: ``None`` for a single 1x1 conv; else a 3x3 conv -> BN -> ReLU to this many channels,
            dropout, then the 1x1 conv (torchvision's ``FCNHead`` uses ``in_channels // 4``).
        dropout: dropout probability before the 1x1 conv of the larger head.

    Returns:
        ``nn.Sequential`` numbered like torchvision's ``FCNHead`` (``0`` conv, ``1`` BN, ``4`` classifier).

    Shape:
        - Input: ``(N, in_channels, H, W)``; Output: ``(N, num_classes, H, W)``
    """
    if head_channels is None:
        return nn.Sequential(nn.Conv2d(in_channels, num_classes, 1))
    return nn.Sequential(
        *ConvNormAct(in_channels, head_channels, 3),
        nn.Dropout(dropout),
        nn.Conv2d(head_channels, num_classes, 1),
    )


def aux_head(info: FeatureInfo, stage: int, num_classes: int) -> tuple[int, nn.Sequential]:
    """The auxiliary classifier on backbone stage ``stage``: torchvision's ``FCNHead`` (``C // 4`` hidden).

    Args:
        info: the backbone's ``feature_info``.
        stage: index of the scored stage (negative counts from the last).
        num_classes: output channels.

    Returns:
        ``(stage index >= 0, head)``.

    Raises:
        ConfigError: ``stage`` outside the backbone's stages.
    """
    if not -len(info) <= stage < len(info):
        raise ConfigError(f"aux_stage must index one of the backbone's {len(info)} stages, got {stage}")
    stage %= len(info)
    channels = info[stage]["num_chs"]
    return stage, fcn_head(channels, num_classes, channels // 4)


def with_aux(
    logits: Tensor,
    maps: list[Tensor],
    aux_classifier: nn.Module | None,
    stage: int | None,
    training: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    """``logits``, or ``(logits, aux_logits)`` in training mode when the model has an auxiliary head.

    Args:
        logits: the model's main scores.
        maps: the backbone's stage maps (``forward_intermediates``).
        aux_classifier: the auxiliary head (``None`` without one).
        stage: the index in ``maps`` it scores.
        training: the model's mode; the head runs in training only.

    Shape:
        - Input: ``logits (N, K, H, W)``, ``maps[stage] (N, C, h, w)``
        - Output: ``(N, K, H, W)``, or a pair of them (the auxiliary scores upsampled bilinearly)
    """
    if aux_classifier is None or stage is None or not training:
        return logits
    aux = aux_classifier(maps[stage])
    return logits, F.interpolate(aux, size=logits.shape[-2:], mode="bilinear", align_corners=False)


class FCN(nn.Module):
    """FCN on any registered backbone, with 0, 1 or 2 skip connections from earlier stages.

    Args:
        backbone: registry name of the classifier used as the encoder.
        num_classes: output channels.
        in_chans: input image channels.
        skips: number of earlier stages whose 1x1 scores are added (0: FCN-32s, 1: FCN-16s, 2: FCN-8s style).
        head_channels: see :func:`fcn_head`.
        dropout: dropout of the larger head.
        aux_loss: add the auxiliary head (see the module docstring).
        aux_stage: the backbone stage it scores (``feature_info`` index).
        **backbone_kwargs: options of the backbone's builder, e.g.
            ``replace_stride_with_dilation=(False, True, True)`` for a ResNet at output stride 8.

    Shape:
        - Input: ``(N, in_chans, H, W)``, any size the backbone accepts
        - Output: ``(N, num_classes, H, W)`` logits; in training mode with ``aux_loss`` a pair
          ``(logits, aux_logits)`` of that shape
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 21,
        in_chans: int = 3,
        skips: int = 0,
        head_channels: int | None = None,
        dropout: float = 0.1,
        aux_loss: bool = False,
        aux_stage: int = -2,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        self.backbone, info = build_backbone(backbone, in_chans, **backbone_kwargs)
        self.feature_info = info
        if not 0 <= skips < len(info):
            raise ConfigError(f"skips must be in 0..{len(info) - 1} for backbone {backbone!r}, got {skips}")
        self.classifier = fcn_head(info[-1]["num_chs"], num_classes, head_channels, dropout)
        self.aux_stage, self.aux_classifier = (
            aux_head(info, aux_stage, num_classes) if aux_loss else (None, None)
        )
        self.skip_indices = [len(info) - 2 - i for i in range(skips)]
        self.skip_classifiers = nn.ModuleList(
            nn.Conv2d(info[i]["num_chs"], num_classes, 1) for i in self.skip_indices
        )
        for conv in self.skip_classifiers:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        maps = self.backbone.forward_intermediates(x)
        scores = self.classifier(maps[-1])
        for index, score_layer in zip(self.skip_indices, self.skip_classifiers):
            skip = score_layer(maps[index])
            scores = F.interpolate(scores, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
        logits = F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return with_aux(logits, maps, self.aux_classifier, self.aux_stage, self.training)


def fcn_resnet50(num_classes: int = 21, in_chans: int = 3, **kwargs: Any) -> FCN:
    """FCN with torchvision's layout: ResNet-50 at output stride 8 (dilated layer3/4) and an ``FCNHead`` of 512.

    ``model.load_state_dict(torchvision.models.segmentation.fcn_resnet50(aux_loss=False).state_dict())``
    works, and both give the same logits; ``aux_loss=True`` on both sides adds the same ``aux_classifier``.

    Args:
        num_classes: output channels (21 for Pascal VOC).
        in_chans: input image channels.
        **kwargs: further :class:`FCN` options (e.g. ``skips``, which adds parameters torchvision lacks).

    Returns:
        The model.
    """
    kwargs.setdefault("replace_stride_with_dilation", (False, True, True))
    return FCN("resnet50", num_classes=num_classes, in_chans=in_chans, head_channels=512, **kwargs)


@register_model(
    task="segmentation",
    input_size=(3, 512, 512),
    paper="Long et al., 2015, Fully Convolutional Networks for Semantic Segmentation",
)
def fcn(num_classes: int = 21, backbone: str = "resnet50", in_chans: int = 3, **kwargs: Any) -> FCN:
    """An FCN on a registered ``backbone`` (see :class:`FCN`).

    Args:
        num_classes: output channels, background included.
        backbone: registered classifier of the encoder.
        in_chans: image channels.
        **kwargs: :class:`FCN` options and the backbone's (``weights=``).
    """
    return FCN(backbone, num_classes=num_classes, in_chans=in_chans, **kwargs)
