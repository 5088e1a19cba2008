"""ResNet, ResNeXt and Wide ResNet: stacks of residual blocks, ``output = F(x) + x``.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385); ResNeXt: Xie et al.,
CVPR 2017 (arXiv:1611.05431); Wide ResNet: Zagoruyko and Komodakis, BMVC 2016 (arXiv:1605.07146).

The network reads like the paper's table 1::

    stem:    7x7 conv, 64, stride 2 -> BN -> ReLU -> 3x3 max pool, stride 2      (reduction 4)
    layer1:  n1 blocks,  64 channels                                             (reduction 4)
    layer2:  n2 blocks, 128 channels, first block stride 2                       (reduction 8)
    layer3:  n3 blocks, 256 channels, first block stride 2                       (reduction 16)
    layer4:  n4 blocks, 512 channels, first block stride 2                       (reduction 32)
    head:    global average pool -> fully connected

Blocks are :class:`cnnkit.layers.BasicBlock` (ResNet-18/34) or :class:`cnnkit.layers.Bottleneck` (ResNet-50
and deeper, whose output has 4x the channels). ``replace_stride_with_dilation`` turns the stride of
layer2/3/4 into dilation, keeping the map at reduction 8 or 16 for segmentation (DeepLab). Module names
equal torchvision's ``resnet*`` builders, so their ``state_dict`` loads with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.layers.residual import BasicBlock, Bottleneck
from cnnkit.models.base import ClassifierModel, FeatureInfo
from cnnkit.models.registry import register_model

PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (arXiv:1512.03385)"
PAPER_RESNEXT = (
    "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017 (arXiv:1611.05431)"
)
PAPER_WIDE = "Zagoruyko and Komodakis, Wide Residual Networks, BMVC 2016 (arXiv:1605.07146)"


class ResNet(ClassifierModel):
    """A ResNet: stem, four stages of residual blocks, global average pool, linear classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the four stages, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input image channels.
        groups: groups of every 3x3 convolution of a bottleneck (ResNeXt cardinality).
        width_per_group: bottleneck channels per group at 64 nominal channels (128 for Wide ResNet).
        replace_stride_with_dilation: three flags for layer2, layer3, layer4: replace the stage's stride 2
            with dilation, so the output stride stays at 8 (``(False, True, True)``) or 16
            (``(False, False, True)``); ``None`` keeps every stride.
        zero_init_residual: initialise the last norm of each residual branch to zero, so every block
            starts as the identity (Goyal et al., 2017, arXiv:1706.02677).
        norm_layer: factory called with a channel count (default ``BatchNorm2d``).

    Shape:
        - Input: ``(N, in_chans, H, W)``
        - Output: ``(N, num_classes)``; ``forward_features``: ``(N, 512 * expansion, H / 32, W / 32)``
          (``H / 8`` or ``H / 16`` with dilation).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        zero_init_residual: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = (False, False, False)
        if len(layers) != 4:
            raise ConfigError(f"a ResNet has 4 stages; got layers={tuple(layers)}")
        if len(replace_stride_with_dilation) != 3:
            raise ConfigError(
                "replace_stride_with_dilation takes 3 flags (layer2, layer3, layer4), "
                f"got {tuple(replace_stride_with_dilation)}"
            )
        if block is BasicBlock and (groups != 1 or width_per_group != 64):
            raise ConfigError("BasicBlock supports only groups=1 and width_per_group=64 (use Bottleneck)")
        self.num_classes = num_classes
        self._block_kwargs: dict[str, Any] = {"norm_layer": norm_layer}
        if block is Bottleneck:
            self._block_kwargs.update(groups=groups, base_width=width_per_group)

        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        info = [dict(num_chs=64, reduction=2, module="relu")]

        self._in_channels, self._dilation, reduction = 64, 1, 4
        stages = []
        for i, (channels, n_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            dilate = i > 0 and replace_stride_with_dilation[i - 1]
            stride = 1 if i == 0 else 2
            stages.append(self._make_stage(block, channels, n_blocks, stride, dilate))
            if stride == 2 and not dilate:
                reduction *= 2
            info.append(dict(num_chs=self._in_channels, reduction=reduction, module=f"layer{i + 1}"))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_info = FeatureInfo(info)
        self.num_features = self._in_channels

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_residual)

    def _make_stage(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        channels: int,
        n_blocks: int,
        stride: int,
        dilate: bool,
    ) -> nn.Sequential:
        # With dilation the stage keeps its input resolution: the first block runs at the previous
        # dilation (it sees the undilated map), the rest at the doubled one.
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        blocks = [block(self._in_channels, channels, stride, previous_dilation, **self._block_kwargs)]
        self._in_channels = channels * block.expansion
        for _ in range(1, n_blocks):
            blocks.append(block(self._in_channels, channels, 1, self._dilation, **self._block_kwargs))
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_norm().weight)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem map (reduction 2) and the output of layer1..layer4, in the order of ``feature_info``."""
        x = self.relu(self.bn1(self.conv1(x)))
        maps = [x]
        x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of layer4, ``(N, num_features, H / 32, W / 32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and classify; ``pre_logits=True`` returns the pooled ``(N, num_features)``."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)


def _card(name: str, weights: str, params: int, macs: int, paper: str = PAPER) -> dict[str, Any]:
    return dict(
        params=params,
        macs=macs,
        input_size=(3, 224, 224),
        min_input_size=(3, 32, 32),
        paper=paper,
        torchvision=name,
        weights=weights,
        first_conv="conv1",
        classifier="fc",
    )


@register_model(**_card("resnet18", "ResNet18_Weights", 11_689_512, 1_814_073_344))
def resnet18(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-18: basic blocks ``(2, 2, 2, 2)``; 11.7M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`ResNet` options (``replace_stride_with_dilation``, ``zero_init_residual``,
            ``norm_layer``).

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("resnet34", "ResNet34_Weights", 21_797_672, 3_663_761_408))
def resnet34(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-34: basic blocks ``(3, 4, 6, 3)``; 21.8M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`ResNet` options.

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("resnet50", "ResNet50_Weights", 25_557_032, 4_089_184_256))
def resnet50(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-50: bottleneck blocks ``(3, 4, 6, 3)``; 25.6M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`ResNet` options.

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("resnet101", "ResNet101_Weights", 44_549_160, 7_801_405_440))
def resnet101(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-101: bottleneck blocks ``(3, 4, 23, 3)``; 44.5M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`ResNet` options.

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_card("resnet152", "ResNet152_Weights", 60_192_808, 11_513_626_624))
def resnet152(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-152: bottleneck blocks ``(3, 8, 36, 3)``; 60.2M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`ResNet` options.

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(
    **_card("resnext50_32x4d", "ResNeXt50_32X4D_Weights", 25_028_904, 4_230_479_872, PAPER_RESNEXT)
)
def resnext50_32x4d(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNeXt-50 (32x4d): ResNet-50 with 32 groups of 4 channels in each 3x3; 25.0M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`ResNet` options.

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        num_classes=num_classes,
        in_chans=in_chans,
        groups=32,
        width_per_group=4,
        **kwargs,
    )


@register_model(**_card("wide_resnet50_2", "Wide_ResNet50_2_Weights", 68_883_240, 11_398_021_120, PAPER_WIDE))
def wide_resnet50_2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with twice the bottleneck width (3x3 convs); 68.9M parameters.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels.
        **kwargs: further :class:`ResNet` options.

    Returns:
        The model; ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.
    """
    return ResNet(
        Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, width_per_group=128, **kwargs
    )
