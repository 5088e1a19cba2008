"""Anchor boxes: predefined box shapes at each spatial location of each pyramid level.

Layout (torchvision's ``AnchorGenerator`` convention, so Faster R-CNN weights trained with it apply):

- Level ``l`` has ``A_l = len(sizes[l]) * len(aspect_ratios[l])`` anchor types. Type ``k = r * S + s`` has
  aspect ratio ``a = aspect_ratios[l][r]`` (``a = h / w``) and size ``sizes[l][s]`` (``S`` sizes): width
  ``size / sqrt(a)`` and height ``size * sqrt(a)``, so its area is ``size^2``. Each half-extent is rounded to
  an integer (as torchvision does), so areas are ``size^2`` within rounding.
- The anchors of a map of ``H x W`` cells with stride ``(s_y, s_x)`` are centred at
  ``((x + offset) * s_x, (y + offset) * s_y)`` for cell ``(y, x)``; ``offset = 0`` (torchvision, anchor
  centres on the cells' top-left corners) or ``0.5`` (pixel-area centres of the cells).
- A level's anchors are a ``(H * W * A_l, 4)`` ``xyxy`` tensor in pixels, ordered by row ``y``, then column
  ``x``, then anchor type ``k``: row ``(y * W + x) * A_l + k``. Concatenating the levels in order gives the
  image's anchors, which is how a head's per-level outputs must be flattened to line up with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnkit.errors import ConfigError


class AnchorGenerator(nn.Module):
    """Anchors of every pyramid level for given feature-map sizes and strides (layout in the module docs).

    Args:
        sizes: per level, the anchor sizes (square root of the area) in pixels.
        aspect_ratios: per level, the ratios ``h / w``.
        offset: cell-centre offset, ``0`` (torchvision) or ``0.5``.

    Shape:
        ``forward`` returns one ``(H_l * W_l * A_l, 4)`` tensor per level.

    Example:
        >>> gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),))
        >>> gen([(1, 2)], strides=[16])[0].tolist()
        [[-16.0, -16.0, 16.0, 16.0], [0.0, -16.0, 32.0, 16.0]]
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),) * 5,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ConfigError(
                f"anchor sizes give {len(sizes)} levels but aspect_ratios give {len(aspect_ratios)}; "
                "pass one tuple of each per pyramid level"
            )
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(tuple(float(a) for a in level) for level in aspect_ratios)
        self.offset = float(offset)
        for level, (s, a) in enumerate(zip(self.sizes, self.aspect_ratios)):
            self.register_buffer(f"cell_anchors_{level}", self.cell_anchors(s, a), persistent=False)

    @staticmethod
    def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
        """The anchor types of one level, centred at ``(0, 0)``: ``(len(aspect_ratios) * len(sizes), 4)`` xyxy.

        Type ``r * len(sizes) + s`` has half-extents ``round(size_s / sqrt(a_r) / 2)`` and
        ``round(size_s * sqrt(a_r) / 2)``.
        """
        scales = torch.tensor(sizes, dtype=torch.float32)
        h_ratios = torch.tensor(aspect_ratios, dtype=torch.float32).sqrt()
        widths = (scales[None, :] / h_ratios[:, None]).reshape(-1)
        heights = (scales[None, :] * h_ratios[:, None]).reshape(-1)
        return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()

    def num_anchors_per_location(self) -> list[int]:
        """``A_l`` of each level."""
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def forward(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int | tuple[int, int]],
        dtype: torch.dtype = torch.float32,
    ) -> list[torch.Tensor]:
        """Anchors of each level.

        Args:
            feature_sizes: ``(H_l, W_l)`` of each level's map.
            strides: pixels per cell of each level, one int or ``(s_y, s_x)``; for a backbone, its
                ``feature_info.reduction()``.
            dtype: floating type of the anchors.

        Returns:
            One ``(H_l * W_l * A_l, 4)`` xyxy tensor per level, on the generator's device.
        """
        if not len(feature_sizes) == len(strides) == len(self.sizes):
            raise ConfigError(
                f"anchor generator has {len(self.sizes)} levels but got {len(feature_sizes)} feature sizes "
                f"and {len(strides)} strides"
            )
        anchors = []
        for level, ((height, width), stride) in enumerate(zip(feature_sizes, strides)):
            stride_y, stride_x = (stride, stride) if isinstance(stride, int | float) else stride
            base = getattr(self, f"cell_anchors_{level}").to(dtype)
            xs = (torch.arange(width, dtype=dtype, device=base.device) + self.offset) * stride_x
            ys = (torch.arange(height, dtype=dtype, device=base.device) + self.offset) * stride_y
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
            anchors.append((centres + base[None]).reshape(-1, 4))
        return anchors


def anchor_points(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell centres of every pyramid level: the points an anchor-free head predicts from.

    Cell ``(y, x)`` of a level with stride ``s`` is centred at ``((x + 0.5) s, (y + 0.5) s)``; points are
    ordered level by level, then by row and column (the order of a head's flattened maps).

    Args:
        feature_sizes: ``(H_l, W_l)`` of each level's map.
        strides: pixels per cell of each level.

    Returns:
        ``points (A, 2)`` ``(x, y)`` pixels and ``strides (A,)``, ``A = sum_l H_l W_l``.

    Example:
        >>> points, strides = anchor_points([(1, 2), (1, 1)], [8, 16])
        >>> points.tolist(), strides.tolist()
        ([[4.0, 4.0], [12.0, 4.0], [8.0, 8.0]], [8.0, 8.0, 16.0])
    """
    if len(feature_sizes) != len(strides):
        raise ConfigError(f"got {len(feature_sizes)} feature sizes but {len(strides)} strides")
    points, point_strides = [], []
    for (height, width), stride in zip(feature_sizes, strides):
        xs = (torch.arange(width, dtype=dtype, device=device) + 0.5) * stride
        ys = (torch.arange(height, dtype=dtype, device=device) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([cx, cy], dim=-1).reshape(-1, 2))
        point_strides.append(torch.full((height * width,), float(stride), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(point_strides)
