"""ConvNeXt (Liu et al., 2022, "A ConvNet for the 2020s", arXiv:2201.03545).

A ResNet "modernized" step by step with Vision Transformer design choices (paper Fig. 2, reference page
"ConvNeXt"), in the order this file builds them:

- a patchify stem: a 4x4 conv with stride 4 (non-overlapping patches) and LayerNorm;
- four stages with the Swin-T compute ratio 1:1:3:1 (tiny: 3, 3, 9, 3 blocks) and channels doubling
  from 96 (tiny/small), 128 (base) or 192 (large);
- separate downsampling layers between stages: LayerNorm then a 2x2 conv with stride 2;
- blocks (:class:`cnnkit.layers.ConvNeXtBlock`): 7x7 depthwise conv, LayerNorm, inverted-bottleneck MLP
  (4x) with GELU, layer scale, stochastic depth and a residual connection;
- global average pooling, LayerNorm and a linear classifier.

Module names follow torchvision's ``convnext_*``: ``features.0`` stem, ``features.1/3/5/7`` stages,
``features.2/4/6`` downsampling, ``classifier.0`` norm, ``classifier.2`` linear.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from cnnkit.layers import ConvNeXtBlock, ConvNormAct, LayerNorm2d
from cnnkit.models.base import ClassifierModel, FeatureInfo
from cnnkit.models.registry import register_model

PAPER = "Liu et al., A ConvNet for the 2020s, CVPR 2022 (arXiv:2201.03545)"


class ConvNeXt(ClassifierModel):
    """ConvNeXt: patchify stem, four stages of ConvNeXt blocks with downsampling between, norm + linear head.

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        drop_path_rate: stochastic depth of the last block; block ``i`` of ``n`` drops its residual
            branch with probability ``drop_path_rate * i / (n - 1)`` (torchvision's
            ``stochastic_depth_prob``).
        layer_scale: initial value of each block's per-channel residual scale.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns normalized pooled features).
        in_chans: input channels of the stem conv.
        norm_eps: epsilon of every LayerNorm.

    Shape:
        - Input: ``(N, in_chans, H, W)``
        - Output: ``(N, num_classes)``; ``forward_features``: ``(N, dims[-1], H/32, W/32)`` (floor).
    """

    classifier_name = "classifier.2"

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        layer_scale: float = 1e-6,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths and dims need one entry per stage, got {len(depths)} and {len(dims)}")
        norm_layer = partial(LayerNorm2d, eps=norm_eps)
        stem = ConvNormAct(
            in_chans, dims[0], 4, 4, padding=0, norm_layer=norm_layer, act_layer=None, bias=True
        )
        layers: list[nn.Module] = [stem]
        feature_info = FeatureInfo()
        total_blocks = sum(depths)
        block_index = 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                layers.append(
                    nn.Sequential(norm_layer(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, stride=2))
                )
            blocks = []
            for _ in range(depth):
                drop_path = drop_path_rate * block_index / max(total_blocks - 1, 1)
                blocks.append(
                    ConvNeXtBlock(dim, layer_scale=layer_scale, drop_path=drop_path, norm_eps=norm_eps)
                )
                block_index += 1
            layers.append(nn.Sequential(*blocks))
            feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"features.{len(layers) - 1}"))

        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            norm_layer(dims[-1]),
            nn.Flatten(1),
            nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity(),
        )
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.feature_info = feature_info
        self._stage_ends = tuple(int(info["module"].rpartition(".")[2]) for info in feature_info)
        self.apply(_init_weights)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of each stage (reductions 4, 8, 16, 32), as ``feature_info``."""
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._stage_ends:
                maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages: ``(N, num_features, H/32, W/32)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, LayerNorm, linear; ``pre_logits`` returns the normalized ``(N, C)``."""
        x = self.classifier[1](self.classifier[0](self.avgpool(x)))
        return x if pre_logits else self.classifier[2](x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``classifier.2`` by a new linear layer (initialised like the original) or an identity."""
        super().reset_classifier(num_classes)
        _init_weights(self.classifier[2])

    def head_modules(self) -> list[str]:
        """The classifier's LayerNorm, Flatten and Linear."""
        return ["classifier"]


def _init_weights(module: nn.Module) -> None:
    # The paper's (and torchvision's) scheme: truncated normal, std 0.02, for conv and linear weights.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


_CARD = dict(
    input_size=(3, 224, 224),
    min_input_size=(3, 32, 32),
    paper=PAPER,
    first_conv="features.0.0",
    classifier="classifier.2",
)


@register_model(
    params=28_589_128,
    macs=4_455_531_264,
    torchvision="convnext_tiny",
    weights="ConvNeXt_Tiny_Weights",
    **_CARD,
)
def convnext_tiny(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-T: depths (3, 3, 9, 3), channels 96-768, stochastic depth 0.1."""
    options: dict[str, Any] = {"drop_path_rate": 0.1, **kwargs}
    return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), num_classes=num_classes, in_chans=in_chans, **options)


@register_model(
    params=50_223_688,
    macs=8_683_712_256,
    torchvision="convnext_small",
    weights="ConvNeXt_Small_Weights",
    **_CARD,
)
def convnext_small(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-S: depths (3, 3, 27, 3), channels 96-768, stochastic depth 0.4."""
    options: dict[str, Any] = {"drop_path_rate": 0.4, **kwargs}
    return ConvNeXt((3, 3, 27, 3), (96, 192, 384, 768), num_classes=num_classes, in_chans=in_chans, **options)


@register_model(
    params=88_591_464,
    macs=15_354_729_472,
    torchvision="convnext_base",
    weights="ConvNeXt_Base_Weights",
    **_CARD,
)
def convnext_base(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-B: depths (3, 3, 27, 3), channels 128-1024, stochastic depth 0.5."""
    options: dict[str, Any] = {"drop_path_rate": 0.5, **kwargs}
    return ConvNeXt(
        (3, 3, 27, 3), (128, 256, 512, 1024), num_classes=num_classes, in_chans=in_chans, **options
    )


@register_model(
    params=197_767_336,
    macs=34_361_433_600,
    torchvision="convnext_large",
    weights="ConvNeXt_Large_Weights",
    **_CARD,
)
def convnext_large(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-L: depths (3, 3, 27, 3), channels 192-1536, stochastic depth 0.5."""
    options: dict[str, Any] = {"drop_path_rate": 0.5, **kwargs}
    return ConvNeXt(
        (3, 3, 27, 3), (192, 384, 768, 1536), num_classes=num_classes, in_chans=in_chans, **options
    )
