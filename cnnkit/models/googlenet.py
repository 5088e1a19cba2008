"""GoogLeNet (Inception v1): Szegedy et al., "Going Deeper with Convolutions", 2014, arXiv:1409.4842.

The reference page: "Parallel branches with different kernel sizes (1x1, 3x3, 5x5) + pooling,
concatenated. 1x1 convolutions for dimensionality reduction." A 7x7 stem and two convolutions bring a
224x224 image to 28x28, nine Inception blocks (3a-3b, 4a-4e, 5a-5b) with max pools between the groups
bring it to 7x7, and global average pooling feeds a single linear classifier. Two auxiliary classifiers
on the outputs of 4a and 4d add gradient to the middle of the network while training.

Module names follow torchvision's ``googlenet`` so its weights load with ``strict=True``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.layers.inception import BasicConv, InceptionBlock
from cnnkit.models.base import ClassifierModel, FeatureInfo
from cnnkit.models.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

__all__ = ["GoogLeNet", "GoogLeNetAux", "GoogLeNetOutputs", "googlenet", "imagenet_to_inception_input"]


class GoogLeNetOutputs(NamedTuple):
    """What :class:`GoogLeNet` returns in training mode with auxiliary heads (torchvision's field order)."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


def imagenet_to_inception_input(x: torch.Tensor) -> torch.Tensor:
    """Re-normalise ImageNet-normalised images to the ``[-1, 1]`` range Google's Inception weights expect.

    An image normalised with ImageNet statistics, ``x = (p - mean) / std``, becomes
    ``x * std / 0.5 + (mean - 0.5) / 0.5 = (p - 0.5) / 0.5``, the input the ported TensorFlow weights
    were trained on (torchvision's ``transform_input``).

    Args:
        x: images normalised with ImageNet mean/std.

    Returns:
        The same images normalised with mean 0.5 and std 0.5.

    Shape:
        - Input: ``(N, 3, H, W)``
        - Output: ``(N, 3, H, W)``
    """
    channels = [
        x[:, c : c + 1] * (std / 0.5) + (mean - 0.5) / 0.5
        for c, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD))
    ]
    return torch.cat(channels, 1)


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool -> 1x1 conv (128) -> FC (1024) -> ReLU -> dropout -> FC.

    Args:
        in_channels: channels of the tapped Inception output (512 after 4a, 528 after 4d).
        num_classes: classifier outputs.
        dropout: dropout probability before the last linear layer (the paper's 0.7).

    Shape:
        - Input: ``(N, in_channels, H, W)``, any ``H, W`` (the pool is adaptive).
        - Output: ``(N, num_classes)``
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = BasicConv(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(p=dropout)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class GoogLeNet(ClassifierModel):
    """GoogLeNet / Inception v1.

    ``forward`` returns logits ``(N, num_classes)``, except in training mode with ``aux_logits=True``,
    where it returns :class:`GoogLeNetOutputs` ``(logits, aux_logits2, aux_logits1)`` as torchvision does;
    a training loss is then typically ``loss(logits) + 0.3 * (loss(aux_logits1) + loss(aux_logits2))``
    (the paper's weighting).

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        aux_logits: build the two auxiliary classifiers (``aux1`` after 4a, ``aux2`` after 4d).
        transform_input: re-normalise ImageNet-normalised input with :func:`imagenet_to_inception_input`
            first (for torchvision's published weights); needs ``in_chans == 3``.
        dropout: dropout probability before the classifier.
        dropout_aux: dropout probability in the auxiliary classifiers.

    Shape:
        - Input: ``(N, in_chans, H, W)``, ``H, W >= 15``.
        - Output: ``(N, num_classes)``; feature maps at reductions 2, 4, 8, 16, 32 (64, 192, 480, 832,
          1024 channels).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__()
        if transform_input and in_chans != 3:
            raise ConfigError(f"transform_input re-normalises RGB input; it needs in_chans=3, got {in_chans}")
        self.num_classes = num_classes
        self.num_features = 1024
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        # Stem: 224 -> 112 -> 56 -> 28.
        self.conv1 = BasicConv(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv(64, 64, 1)
        self.conv3 = BasicConv(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        # Inception blocks (paper Table 1): in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
        self.inception3a = InceptionBlock(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = InceptionBlock(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = InceptionBlock(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = InceptionBlock(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = InceptionBlock(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = InceptionBlock(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = InceptionBlock(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = InceptionBlock(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = InceptionBlock(832, 384, 192, 384, 48, 128, 128)

        self.aux1 = GoogLeNetAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2 = GoogLeNetAux(528, num_classes, dropout_aux) if aux_logits else None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

        self.feature_info = FeatureInfo(
            [
                dict(num_chs=64, reduction=2, module="conv1"),
                dict(num_chs=192, reduction=4, module="conv3"),
                dict(num_chs=480, reduction=8, module="inception3b"),
                dict(num_chs=832, reduction=16, module="inception4e"),
                dict(num_chs=1024, reduction=32, module="inception5b"),
            ]
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: truncated normal (std 0.01, cut at +-2) for conv and linear weights.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _trunk(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Stage maps, plus the outputs of 4a and 4d that the auxiliary classifiers read."""
        if self.transform_input:
            x = imagenet_to_inception_input(x)
        c1 = self.conv1(x)
        c2 = self.conv3(self.conv2(self.maxpool1(c1)))
        c3 = self.inception3b(self.inception3a(self.maxpool2(c2)))
        tap1 = self.inception4a(self.maxpool3(c3))
        tap2 = self.inception4d(self.inception4c(self.inception4b(tap1)))
        c4 = self.inception4e(tap2)
        c5 = self.inception5b(self.inception5a(self.maxpool4(c4)))
        return [c1, c2, c3, c4, c5], tap1, tap2

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps of the five stages (``conv1``, ``conv3``, ``inception3b``, ``inception4e``, ``inception5b``).

        Shape:
            - Input: ``(N, in_chans, H, W)``
            - Output: ``(N, C_i, ceil(H / r_i), ceil(W / r_i))`` for the ``feature_info`` entries.
        """
        return self._trunk(x)[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``inception5b``, ``(N, 1024, H / 32, W / 32)``."""
        return self._trunk(x)[0][-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pool, dropout, ``fc``; ``pre_logits`` returns the pooled ``(N, 1024)`` features."""
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        """Logits ``(N, num_classes)``; in training mode with aux heads, :class:`GoogLeNetOutputs`."""
        maps, tap1, tap2 = self._trunk(x)
        logits = self.forward_head(maps[-1])
        if self.training and self.aux1 is not None and self.aux2 is not None:
            return GoogLeNetOutputs(logits, self.aux2(tap2), self.aux1(tap1))
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """New ``fc`` (and new last layers ``fc2`` of the auxiliary heads) with ``num_classes`` outputs."""
        super().reset_classifier(num_classes)
        reference = self.conv1.conv.weight
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity()
                aux.fc2.to(device=reference.device, dtype=reference.dtype)

    def head_modules(self) -> list[str]:
        """``fc`` and the auxiliary heads, which ``features_only`` drops."""
        return ["fc"] + (["aux1", "aux2"] if self.aux_logits else [])


@register_model(
    params=13_004_888,
    macs=1_498_376_192,
    input_size=(3, 224, 224),
    min_input_size=(3, 15, 15),
    paper="Szegedy et al., Going Deeper with Convolutions, CVPR 2015 (arXiv:1409.4842)",
    torchvision="googlenet",
    weights="GoogLeNet_Weights",
    first_conv="conv1.conv",
    classifier="fc",  # torchvision's published weights expect its ImageNet-to-Inception input rescaling.
    extra={"pretrained_kwargs": {"transform_input": True}},
)
def googlenet(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1) with auxiliary heads, like torchvision's ``googlenet(weights=None)``.

    13,004,888 parameters with the auxiliary heads (``aux_logits=True``, the default), 6,624,904 without
    (``aux_logits=False``; the count torchvision's weights metadata reports, since it drops the heads
    after loading). The heads run only in training mode, so MACs are the same either way.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        **kwargs: :class:`GoogLeNet` options (``aux_logits``, ``transform_input``, ``dropout``,
            ``dropout_aux``).

    Returns:
        A :class:`GoogLeNet`.
    """
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
