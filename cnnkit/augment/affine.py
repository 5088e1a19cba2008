"""Random affine transform (rotation, translation, scale) per sample, in one ``grid_sample`` call."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cnnkit.augment.base import Params, Targets, Transform, as_range, uniform
from cnnkit.augment.geometric import interpolation_mode, warp
from cnnkit.errors import ConfigError


def affine_inverse(angle: Tensor, translate: Tensor, scale: Tensor, cx: float, cy: float) -> Tensor:
    """Inverse maps ``(B, 2, 3)`` of ``p' = c + t + s R(angle) (p - c)``.

    The angle has the sign convention of ``torchvision.transforms.v2.functional.affine``: with the y axis
    down, ``R(a)`` maps ``(dx, dy) -> (cos a dx - sin a dy, sin a dx + cos a dy)`` (clockwise on screen).
    The inverse is ``p = c + R(-a) (p' - c - t) / s``.

    Shape:
        - angle, scale: ``(B,)`` (degrees, factor); translate: ``(B, 2)`` pixels.
        - Output: ``(B, 2, 3)`` float64.
    """
    rad = angle.to(torch.float64) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    inv_s = 1.0 / scale.to(torch.float64)
    # Rows of R(-a) / s.
    a00, a01 = cos * inv_s, sin * inv_s
    a10, a11 = -sin * inv_s, cos * inv_s
    ux = cx + translate[:, 0].to(torch.float64)
    uy = cy + translate[:, 1].to(torch.float64)
    tx = cx - a00 * ux - a01 * uy
    ty = cy - a10 * ux - a11 * uy
    return torch.stack([torch.stack([a00, a01, tx], 1), torch.stack([a10, a11, ty], 1)], 1)


class RandomAffine(Transform):
    """Rotate, translate and scale each sample with its own random parameters (about the image centre).

    Boxes become the enclosing box of their four transformed corners (then clipped and filtered); masks are
    sampled nearest-neighbour. Arguments follow ``torchvision.transforms.v2.RandomAffine`` (no shear).

    Args:
        degrees: ``d`` for angles in ``[-d, d]``, or a ``(min, max)`` range.
        translate: ``(fx, fy)``: shifts drawn from ``[-fx W, fx W]`` and ``[-fy H, fy H]`` pixels; ``None``
            for no shift.
        scale: ``(min, max)`` scale factor range; ``None`` for 1.
        interpolation: ``"nearest"`` (torchvision's default) or ``"bilinear"``.
        fill: value(s) for the area brought in from outside the image (0 when ``None``).
    """

    def __init__(
        self,
        degrees: float | Sequence[float],
        translate: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
        interpolation: object = "nearest",
        fill: float | Sequence[float] | None = 0,
    ) -> None:
        self.degrees = as_range(degrees, "degrees")
        if translate is not None and (len(translate) != 2 or not all(0.0 <= t <= 1.0 for t in translate)):
            raise ConfigError(f"translate must be two fractions in [0, 1], got {translate!r}")
        if scale is not None and (len(scale) != 2 or not 0.0 < scale[0] <= scale[1]):
            raise ConfigError(f"scale must be (min, max) with 0 < min <= max, got {scale!r}")
        self.translate = None if translate is None else (float(translate[0]), float(translate[1]))
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.interpolation = interpolation_mode(interpolation)
        self.fill = fill

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        angle = uniform(*self.degrees, b, generator)
        if self.translate is None:
            shift = torch.zeros(b, 2)
        else:
            fx, fy = self.translate
            shift = torch.stack(
                [uniform(-fx * w, fx * w, b, generator), uniform(-fy * h, fy * h, b, generator)], 1
            )
        scale = torch.ones(b) if self.scale is None else uniform(*self.scale, b, generator)
        return {"angle": angle, "translate": shift, "scale": scale}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        h, w = images.shape[-2:]
        inverse = affine_inverse(params["angle"], params["translate"], params["scale"], w / 2.0, h / 2.0)
        return warp(images, targets, inverse, (h, w), self.interpolation, self.fill)
