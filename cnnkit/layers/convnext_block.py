"""The ConvNeXt block (Liu et al., 2022, "A ConvNet for the 2020s", arXiv:2201.03545)."""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers.regularization import StochasticDepth


class Permute(nn.Module):
    """Reorder the dimensions of a tensor, e.g. ``(0, 2, 3, 1)`` for ``(N, C, H, W) -> (N, H, W, C)``.

    Args:
        dims: the new order of the input's dimensions.

    Shape:
        - Input: any tensor with ``len(dims)`` dimensions.
        - Output: ``x.permute(*dims)``.
    """

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, inverted-bottleneck MLP, layer scale, stochastic depth, residual.

    ``y = x + drop_path(gamma * W2 GELU(W1 LN(dwconv7x7(x))))`` where ``W1`` expands the channels 4x
    and ``W2`` projects back, both applied per pixel as ``nn.Linear`` on a channels-last map, and
    ``gamma`` (``layer_scale``, shape ``(C, 1, 1)``) starts small (1e-6) so every block begins close to
    the identity (CaiT, Touvron et al., 2021). One norm and one activation per block, as the paper
    recommends. Children are named like torchvision's ``CNBlock`` (``block.0`` dwconv, ``block.2``
    LayerNorm, ``block.3``/``block.5`` Linear, ``layer_scale``), so ``state_dict`` keys match.

    Args:
        dim: channels ``C`` (unchanged by the block).
        layer_scale: initial value of every entry of ``gamma``.
        drop_path: stochastic-depth probability of the residual branch (row mode).
        kernel_size: depthwise kernel (7 in the paper).
        mlp_ratio: hidden width of the MLP relative to ``dim`` (4 in the paper).
        norm_eps: epsilon of the LayerNorm.

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: ``(N, C, H, W)``
    """

    def __init__(
        self,
        dim: int,
        layer_scale: float = 1e-6,
        drop_path: float = 0.0,
        kernel_size: int = 7,
        mlp_ratio: int = 4,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim),
            Permute((0, 2, 3, 1)),
            nn.LayerNorm(dim, eps=norm_eps),
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(),
            nn.Linear(mlp_ratio * dim, dim),
            Permute((0, 3, 1, 2)),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.stochastic_depth = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stochastic_depth(self.layer_scale * self.block(x))
        out += x  # in place (as torchvision): one activation-sized allocation less per block
        return out
