"""Inception blocks: parallel branches of different receptive fields, concatenated along channels.

GoogLeNet (Szegedy et al., 2014, arXiv:1409.4842) runs 1x1, 3x3 and 5x5 convolutions and a pooling branch
side by side on the same input and concatenates their outputs; 1x1 convolutions before the larger kernels
reduce the channels so the block stays cheap (reference page, "GoogLeNet / Inception" and "1x1
Convolutions"). Inception v3 (Szegedy et al., 2015, arXiv:1512.00567) factorises the large kernels into
stacks of small or asymmetric ones (5x5 -> two 3x3, 7x7 -> 1x7 then 7x1) and reduces the grid with
parallel stride-2 branches instead of a lone pooling layer.

Child names follow torchvision's ``googlenet`` and ``inception_v3`` so their ``state_dict`` loads as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KernelSize = int | tuple[int, int]


class BasicConv(nn.Module):
    """``Conv2d`` (no bias) -> ``BatchNorm2d(eps=1e-3)`` -> ReLU, the unit every Inception branch is made of.

    The children are named ``conv`` and ``bn`` like torchvision's ``BasicConv2d``; the batch-norm epsilon
    ``1e-3`` is the one of the ported TensorFlow weights.

    Args:
        in_channels / out_channels: channels in and out.
        kernel_size: kernel size, an int or an asymmetric ``(kh, kw)`` pair such as ``(1, 7)``.
        stride: stride.
        padding: zero padding, an int or a ``(ph, pw)`` pair.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, H_out, W_out)``, ``H_out = floor((H + 2 * ph - kh) / stride) + 1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: KernelSize,
        stride: int = 1,
        padding: KernelSize = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """The GoogLeNet Inception module: four parallel branches concatenated along channels.

    ``branch1``: 1x1 conv; ``branch2``: 1x1 reduce -> 3x3; ``branch3``: 1x1 reduce -> the "5x5" branch;
    ``branch4``: 3x3 max pool (stride 1) -> 1x1 projection. The output has
    ``ch1x1 + ch3x3 + ch5x5 + pool_proj`` channels at the input's resolution.

    The "5x5" branch uses a 3x3 kernel, as in torchvision's port of the published weights (the paper's
    Table 1 says 5x5); keeping it is what lets those weights load.

    Args:
        in_channels: input channels.
        ch1x1: output channels of the 1x1 branch.
        ch3x3red / ch3x3: reduction and output channels of the 3x3 branch.
        ch5x5red / ch5x5: reduction and output channels of the "5x5" branch.
        pool_proj: output channels of the pooling branch's 1x1 projection.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)``
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(
            BasicConv(in_channels, ch3x3red, 1), BasicConv(ch3x3red, ch3x3, 3, padding=1)
        )
        self.branch3 = nn.Sequential(
            BasicConv(in_channels, ch5x5red, 1), BasicConv(ch5x5red, ch5x5, 3, padding=1)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), BasicConv(in_channels, pool_proj, 1)
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionA(nn.Module):
    """Inception v3 block for the 35x35 grid (paper Fig. 5): the 5x5 conv factorised into two 3x3 convs.

    Branches: 1x1 (64); 1x1 (48) -> 5x5 (64); 1x1 (64) -> 3x3 (96) -> 3x3 (96); 3x3 average pool ->
    1x1 (``pool_features``). The 5x5 branch is kept as in torchvision's port of the published weights.

    Args:
        in_channels: input channels.
        pool_features: output channels of the pooling branch.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, 224 + pool_features, H, W)``
    """

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1)
        self.branch_pool = BasicConv(in_channels, pool_features, 1)
        self.out_channels = 64 + 64 + 96 + pool_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Inception v3 grid reduction 35x35 -> 17x17 (paper Fig. 10): stride-2 conv and pool side by side.

    Branches: 3x3 stride 2 (384); 1x1 (64) -> 3x3 (96) -> 3x3 stride 2 (96); 3x3 max pool stride 2.
    Reducing the grid with parallel branches avoids both the representational bottleneck of pooling first
    and the cost of expanding first.

    Args:
        in_channels: input channels.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, 480 + in_channels, (H - 3) // 2 + 1, (W - 3) // 2 + 1)``
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2)
        self.out_channels = 384 + 96 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """Inception v3 block for the 17x17 grid (paper Fig. 6): 7x7 convs factorised into 1x7 and 7x1.

    Branches: 1x1 (192); 1x1 (c7) -> 1x7 (c7) -> 7x1 (192); 1x1 (c7) -> 7x1 -> 1x7 -> 7x1 -> 1x7 (192);
    3x3 average pool -> 1x1 (192). An ``n x n`` kernel becomes ``1 x n`` then ``n x 1``: the same receptive
    field with ``2n`` instead of ``n^2`` weights per channel pair.

    Args:
        in_channels: input channels.
        channels_7x7: hidden channels ``c7`` of the factorised 7x7 branches.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, 768, H, W)``
    """

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv(in_channels, 192, 1)
        self.out_channels = 4 * 192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(branch7x7dbl))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """Inception v3 grid reduction 17x17 -> 8x8: stride-2 conv branches beside a stride-2 max pool.

    Branches: 1x1 (192) -> 3x3 stride 2 (320); 1x1 (192) -> 1x7 -> 7x1 -> 3x3 stride 2 (192); 3x3 max
    pool stride 2.

    Args:
        in_channels: input channels.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, 512 + in_channels, (H - 3) // 2 + 1, (W - 3) // 2 + 1)``
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2)
        self.out_channels = 320 + 192 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(branch7x7x3))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """Inception v3 block for the 8x8 grid (paper Fig. 7): expanded, with 1x3 and 3x1 convs side by side.

    Branches: 1x1 (320); 1x1 (384) -> [1x3 (384), 3x1 (384)]; 1x1 (448) -> 3x3 (384) -> [1x3 (384),
    3x1 (384)]; 3x3 average pool -> 1x1 (192). On the coarsest grid the asymmetric convs run in parallel
    rather than in sequence, widening the representation (2048 channels out).

    Args:
        in_channels: input channels.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, 2048, H, W)``
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv(in_channels, 192, 1)
        self.out_channels = 320 + 768 + 768 + 192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)
