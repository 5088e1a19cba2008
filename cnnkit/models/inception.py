"""Inception v3: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2015,
arXiv:1512.00567.

Inception v1's idea (reference page, "GoogLeNet / Inception": parallel branches, 1x1 reductions) with
factorised convolutions: a 5x5 becomes two 3x3, a 7x7 becomes 1x7 then 7x1, and the grid is reduced by
stride-2 branches running beside a pool. A 299x299 image goes through a plain convolutional stem to
35x35, three ``InceptionA`` blocks, a reduction to 17x17, four ``InceptionC`` blocks, a reduction to 8x8
and two ``InceptionE`` blocks (2048 channels), then global average pooling and one linear classifier. One
auxiliary classifier on the 17x17 grid regularises training.

Module names follow torchvision's ``inception_v3`` (``Conv2d_1a_3x3``, ``Mixed_5b``, ...: the names of
the original TensorFlow graph) so its weights load with ``strict=True``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.layers.inception import BasicConv, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE
from cnnkit.models.base import ClassifierModel, FeatureInfo
from cnnkit.models.googlenet import imagenet_to_inception_input
from cnnkit.models.registry import register_model

__all__ = ["InceptionV3", "InceptionV3Aux", "InceptionV3Outputs", "inception_v3"]


class InceptionV3Outputs(NamedTuple):
    """What :class:`InceptionV3` returns in training mode with the auxiliary head (torchvision's fields)."""

    logits: torch.Tensor
    aux_logits: torch.Tensor


class InceptionV3Aux(nn.Module):
    """Auxiliary classifier on the 17x17 grid: 5x5/3 average pool -> 1x1 conv (128) -> 5x5 conv (768) -> FC.

    Args:
        in_channels: channels of the tapped map (768 after ``Mixed_6e``).
        num_classes: classifier outputs.

    Shape:
        - Input: ``(N, in_channels, H, W)`` with ``H, W >= 17`` (the 5x5 conv needs a 5x5 pooled map).
        - Output: ``(N, num_classes)``
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv(in_channels, 128, 1)
        self.conv1 = BasicConv(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionV3(ClassifierModel):
    """Inception v3.

    ``forward`` returns logits ``(N, num_classes)``, except in training mode with ``aux_logits=True``,
    where it returns :class:`InceptionV3Outputs` ``(logits, aux_logits)`` as torchvision does (the paper
    weights the auxiliary loss by 0.3, torchvision's reference recipe by 0.4). The auxiliary head needs a
    17x17 ``Mixed_6e`` map, i.e. an input of at least 299x299 while training.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        aux_logits: build the auxiliary classifier ``AuxLogits``.
        transform_input: re-normalise ImageNet-normalised input with
            :func:`cnnkit.models.googlenet.imagenet_to_inception_input` first (for torchvision's published
            weights); needs ``in_chans == 3``.
        dropout: dropout probability before the classifier.

    Shape:
        - Input: ``(N, in_chans, H, W)``, ``H, W >= 75``.
        - Output: ``(N, num_classes)``; feature maps at reductions 2, 4, 8, 16, 32 (64, 192, 288, 768,
          2048 channels), e.g. 147, 71, 35, 17, 8 pixels wide at 299.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if transform_input and in_chans != 3:
            raise ConfigError(f"transform_input re-normalises RGB input; it needs in_chans=3, got {in_chans}")
        self.num_classes = num_classes
        self.num_features = 2048
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        # Stem (paper Table 1), unpadded convs: 299 -> 149 -> 147 -> 73 -> 71 -> 35.
        self.Conv2d_1a_3x3 = BasicConv(in_chans, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)

        # 35x35: three Fig. 5 blocks, then reduction to 17x17.
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        # 17x17: four Fig. 6 blocks, then reduction to 8x8.
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionV3Aux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        # 8x8: two Fig. 7 blocks.
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

        self.feature_info = FeatureInfo(
            [
                dict(num_chs=64, reduction=2, module="Conv2d_2b_3x3"),
                dict(num_chs=192, reduction=4, module="Conv2d_4a_3x3"),
                dict(num_chs=288, reduction=8, module="Mixed_5d"),
                dict(num_chs=768, reduction=16, module="Mixed_6e"),
                dict(num_chs=2048, reduction=32, module="Mixed_7c"),
            ]
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: truncated normal (cut at +-2) with std 0.1, except 0.01 for the auxiliary
        # 5x5 conv and 0.001 for the auxiliary classifier.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.1, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.AuxLogits is not None:
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, mean=0.0, std=0.001, a=-2, b=2)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps of the five stages (``Conv2d_2b_3x3``, ``Conv2d_4a_3x3``, ``Mixed_5d``, ``Mixed_6e``,
        ``Mixed_7c``).

        Shape:
            - Input: ``(N, in_chans, H, W)``
            - Output: ``(N, C_i, H_i, W_i)`` for the ``feature_info`` entries (unpadded convs and pools
              shrink the maps a little below ``H / r_i``).
        """
        if self.transform_input:
            x = imagenet_to_inception_input(x)
        c1 = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        c2 = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(c1)))
        c3 = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(self.maxpool2(c2))))
        c4 = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(c3)))))
        c5 = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(c4)))
        return [c1, c2, c3, c4, c5]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``Mixed_7c``, ``(N, 2048, H', W')`` (8x8 at 299)."""
        return self.forward_intermediates(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pool, dropout, ``fc``; ``pre_logits`` returns the pooled ``(N, 2048)`` features."""
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | InceptionV3Outputs:
        """Logits ``(N, num_classes)``; in training mode with the aux head, :class:`InceptionV3Outputs`."""
        maps = self.forward_intermediates(x)
        logits = self.forward_head(maps[-1])
        if self.training and self.AuxLogits is not None:
            return InceptionV3Outputs(logits, self.AuxLogits(maps[3]))
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """New ``fc`` (and a new auxiliary ``AuxLogits.fc``) with ``num_classes`` outputs (0: identity)."""
        super().reset_classifier(num_classes)
        if self.AuxLogits is not None:
            reference = self.Conv2d_1a_3x3.conv.weight
            self.AuxLogits.fc = nn.Linear(768, num_classes) if num_classes > 0 else nn.Identity()
            self.AuxLogits.fc.to(device=reference.device, dtype=reference.dtype)

    def head_modules(self) -> list[str]:
        """``fc`` and the auxiliary head, which ``features_only`` drops."""
        return ["fc"] + (["AuxLogits"] if self.aux_logits else [])


@register_model(
    params=27_161_264,
    macs=5_713_216_096,
    input_size=(3, 299, 299),
    min_input_size=(3, 75, 75),
    paper="Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016 "
    "(arXiv:1512.00567)",
    torchvision="inception_v3",
    weights="Inception_V3_Weights",
    first_conv="Conv2d_1a_3x3.conv",
    classifier="fc",  # torchvision's published weights expect its ImageNet-to-Inception input rescaling.
    extra={"pretrained_kwargs": {"transform_input": True}},
)
def inception_v3(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> InceptionV3:
    """Inception v3 with its auxiliary head, like torchvision's ``inception_v3(weights=None)``.

    27,161,264 parameters with the auxiliary head (the default), 23,834,568 with ``aux_logits=False``.
    The head runs only in training mode, so MACs are the same either way.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        **kwargs: :class:`InceptionV3` options (``aux_logits``, ``transform_input``, ``dropout``).

    Returns:
        An :class:`InceptionV3`.
    """
    return InceptionV3(num_classes=num_classes, in_chans=in_chans, **kwargs)
