"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

The page: "Feature Pyramid Network (FPN): multi-scale feature maps for detecting objects of different
sizes". Parameter names follow ``torchvision.ops.FeaturePyramidNetwork`` (``inner_blocks``,
``layer_blocks``, ``extra_blocks.p6`` / ``.p7``), so its ``state_dict`` loads unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.layers.conv import ConvNormAct, NormFactory


class LastLevelP6P7(nn.Module):
    """RetinaNet's extra levels (Lin et al., "Focal Loss for Dense Object Detection", 2017):
    ``P6 = conv3x3/2(x)``, ``P7 = conv3x3/2(relu(P6))``, with ``x = P5`` when ``in_channels ==
    out_channels`` and ``x = C5`` (the last backbone map) otherwise, as torchvision decides.

    Args:
        in_channels: channels of ``x``.
        out_channels: the FPN's channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        self.use_p5 = in_channels == out_channels

    def forward(self, pyramid: list[torch.Tensor], features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[P6, P7]`` from the FPN outputs ``pyramid`` and the backbone maps ``features``."""
        p6 = self.p6(pyramid[-1] if self.use_p5 else features[-1])
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Top-down pathway with lateral connections over a backbone's maps (finest first).

    For levels ``i = L-1 .. 0`` (coarsest first): ``M_{L-1} = lateral_{L-1}(C_{L-1})`` and
    ``M_i = lateral_i(C_i) + upsample_nearest(M_{i+1}, size(C_i))``, with ``lateral_i`` a 1x1 conv to
    ``out_channels``; each output is ``P_i = smooth_i(M_i)``, a 3x3 conv (Lin et al. 2017, Sec. 3). Optional
    extra levels: ``"pool"`` appends ``P_L = P_{L-1}`` subsampled by 2 (kernel-1 max pooling, Faster R-CNN
    with FPN), ``"p6p7"`` appends RetinaNet's :class:`LastLevelP6P7`.

    Args:
        in_channels_list: channels of each input map, e.g. ``backbone.feature_info.channels()``.
        out_channels: channels of every output map.
        extra_blocks: ``None``, ``"pool"`` or ``"p6p7"``.
        p6p7_in_channels: channels ``P6`` is computed from; default ``out_channels`` (from ``P5``), pass the
            last input's channels to compute it from ``C5``.
        norm_layer: optional norm after each conv (then the convs have no bias).

    Shape:
        - Input: list of ``(N, in_channels_list[i], H_i, W_i)``, resolution decreasing.
        - Output: list of ``(N, out_channels, H_i, W_i)``, plus one or two maps for ``extra_blocks``
          (each ``ceil`` half the size of the one before).
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_blocks: Literal["pool", "p6p7"] | None = None,
        p6p7_in_channels: int | None = None,
        norm_layer: NormFactory | None = None,
    ) -> None:
        super().__init__()
        if not in_channels_list or any(c <= 0 for c in in_channels_list):
            raise ConfigError(
                f"FPN in_channels_list must be positive channel counts, got {list(in_channels_list)}"
            )
        if extra_blocks not in (None, "pool", "p6p7"):
            raise ConfigError(f"FPN extra_blocks must be None, 'pool' or 'p6p7', got {extra_blocks!r}")
        self.inner_blocks = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, padding=0, norm_layer=norm_layer, act_layer=None)
            for c in in_channels_list
        )
        self.layer_blocks = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm_layer=norm_layer, act_layer=None)
            for _ in in_channels_list
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.pool = extra_blocks == "pool"
        self.extra_blocks = (
            LastLevelP6P7(p6p7_in_channels or out_channels, out_channels) if extra_blocks == "p6p7" else None
        )
        if self.extra_blocks is not None:
            for conv in (self.extra_blocks.p6, self.extra_blocks.p7):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
        self.out_channels = out_channels
        self.num_levels = len(in_channels_list) + {None: 0, "pool": 1, "p6p7": 2}[extra_blocks]

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Pyramid maps ``[P_0, ..., P_{L-1}]`` (plus extra levels) from backbone maps ``[C_0, ..., C_{L-1}]``."""
        if len(features) != len(self.inner_blocks):
            raise ConfigError(f"FPN built for {len(self.inner_blocks)} maps got {len(features)}")
        features = list(features)
        merged = self.inner_blocks[-1](features[-1])
        outputs = [self.layer_blocks[-1](merged)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[i](features[i])
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.layer_blocks[i](merged))
        if self.pool:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        if self.extra_blocks is not None:
            outputs.extend(self.extra_blocks(outputs, features))
        return outputs


class PAN(nn.Module):
    """Path Aggregation Network: an :class:`FPN` top-down path, then a bottom-up path (Liu et al., "Path
    Aggregation Network for Instance Segmentation", CVPR 2018, Sec. 3.1).

    With ``P_0 .. P_{L-1}`` the FPN's maps (finest first), the bottom-up path starts at ``N_0 = P_0`` and
    builds ``N_{i+1} = fuse_i(down_i(N_i) + P_{i+1})``: ``down_i`` a stride-2 3x3 conv, ``fuse_i`` a 3x3
    conv, each with norm and activation (the paper's augmented bottom-up structure). Fine localisation
    signal then reaches the coarse levels in a few layers instead of through the whole backbone. A
    downsampled map whose size differs from ``P_{i+1}``'s (a backbone that rounds odd sizes down) is resized
    to it by nearest neighbour.

    Args:
        in_channels_list: channels of each input map, e.g. ``backbone.feature_info.channels()``.
        out_channels: channels of every output map.
        norm_layer: norm of the bottom-up convs (and of the FPN's, which then have no bias); default
            ``BatchNorm2d``.
        act_layer: activation of the bottom-up convs.

    Shape:
        - Input: list of ``(N, in_channels_list[i], H_i, W_i)``, resolution decreasing.
        - Output: list of ``(N, out_channels, H_i, W_i)``.
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        norm_layer: NormFactory | None = nn.BatchNorm2d,
        act_layer: type[nn.Module] | None = nn.SiLU,
    ) -> None:
        super().__init__()
        self.fpn = FPN(in_channels_list, out_channels, norm_layer=norm_layer)
        levels = len(in_channels_list)
        self.down = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, stride=2, norm_layer=norm_layer, act_layer=act_layer)
            for _ in range(levels - 1)
        )
        self.fuse = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm_layer=norm_layer, act_layer=act_layer)
            for _ in range(levels - 1)
        )
        self.out_channels = out_channels
        self.num_levels = levels

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Maps ``[N_0, ..., N_{L-1}]`` from backbone maps ``[C_0, ..., C_{L-1}]``."""
        pyramid = self.fpn(features)
        outputs = [pyramid[0]]
        for i, (down, fuse) in enumerate(zip(self.down, self.fuse)):
            lateral = pyramid[i + 1]
            reduced = F.interpolate(down(outputs[-1]), size=lateral.shape[-2:], mode="nearest")
            outputs.append(fuse(reduced + lateral))
        return outputs
