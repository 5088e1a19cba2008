"""Erase a rectangle per sample: RandomErasing (Zhong et al. 2017) and Cutout (DeVries & Taylor 2017).

Boxes, labels and masks are left as they are (as torchvision does): the object is still there, only hidden.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cnnkit.augment.base import (
    Params,
    Targets,
    Transform,
    as_range,
    as_size,
    bernoulli,
    check_probability,
    randint_below,
    uniform,
)
from cnnkit.errors import ConfigError


def erase(
    images: Tensor,
    rects: Tensor,
    value: float | Sequence[float] | str,
    seeds: Tensor | None,
    inplace: bool = False,
) -> Tensor:
    """Fill one rectangle per sample.

    Args:
        images: ``(B, C, H, W)``.
        rects: ``(B, 4)`` integer ``(x1, y1, x2, y2)``, end-exclusive; an empty rectangle erases nothing.
        value: fill in the image's own range (a number, one per channel), or ``"random"``: standard normal
            noise for floating images (as torchvision), uniform levels 0..255 for uint8.
        seeds: ``(B,)`` seeds of the noise when ``value == "random"``.
        inplace: write into ``images`` instead of a new tensor.

    Returns:
        ``(B, C, H, W)`` of the same dtype (``images`` itself when ``inplace``).
    """
    b, c, h, w = images.shape
    r = rects.to(images.device)
    xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
    ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
    columns = (xs >= r[:, 0].view(-1, 1, 1, 1)) & (xs < r[:, 2].view(-1, 1, 1, 1))
    rows = (ys >= r[:, 1].view(-1, 1, 1, 1)) & (ys < r[:, 3].view(-1, 1, 1, 1))
    # (B, 1, H, W) 0/1 in the image's dtype; the fill is blended by arithmetic, since on the CPU
    # torch.where and masked_fill with a broadcast mask are about 25 times slower than a multiply
    inside = (rows & columns).to(images.dtype)
    if isinstance(value, str):
        noise = torch.empty(images.shape, dtype=images.dtype)
        for i, seed in enumerate(seeds.tolist()):
            g = torch.Generator().manual_seed(seed)
            if images.dtype == torch.uint8:
                noise[i] = torch.randint(0, 256, (c, h, w), generator=g, dtype=torch.uint8)
            else:
                noise[i] = torch.randn((c, h, w), generator=g, dtype=images.dtype)
        fill = noise.to(images.device)
    else:
        fill = torch.as_tensor(value, dtype=images.dtype, device=images.device).flatten()
        fill = fill.view(1, -1, 1, 1) if fill.numel() > 1 else fill.view(1, 1, 1, 1)
    keep = 1 - inside
    out = images.mul_(keep) if inplace else images * keep
    if isinstance(value, str) or bool(fill.any()):  # exactly one of the two terms is non-zero per pixel
        out += fill * inside
    return out


def _check_value(value: float | Sequence[float] | str) -> float | tuple[float, ...] | str:
    if isinstance(value, str):
        if value != "random":
            raise ConfigError(f"value must be a number, a sequence of numbers or 'random', got {value!r}")
        return value
    return float(value) if isinstance(value, (int, float)) else tuple(float(v) for v in value)


def _seeds(value: object, n: int, generator: torch.Generator | None) -> Tensor | None:
    if value != "random":
        return None
    return torch.randint(0, 2**62, (n,), generator=generator)


class RandomErasing(Transform):
    """Erase a random rectangle in each sample with probability ``p`` (Zhong et al. 2017, "Random Erasing").

    Sampling follows torchvision: up to 10 tries of ``area = U(scale) * H * W`` and
    ``aspect = exp(U(log ratio))``, ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``,
    accepted when ``h < H`` and ``w < W``, at a uniform integer position; nothing is erased if no try fits.

    Args:
        p: probability that a sample is erased.
        scale: range of the erased area as a fraction of the image.
        ratio: range of the erased aspect ratio.
        value: fill value(s) in the image's range, or ``"random"`` (see :func:`erase`).
        inplace: erase in the input tensor instead of a copy.
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.33),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float | Sequence[float] | str = 0.0,
        inplace: bool = False,
    ) -> None:
        self.p = check_probability(p)
        self.scale = as_range(scale, "scale")
        self.ratio = as_range(ratio, "ratio")
        if self.ratio[0] <= 0:
            raise ConfigError(f"ratio must be positive, got {ratio}")
        self.value = _check_value(value)
        self.inplace = inplace

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b, _, h, w = images.shape
        tries = 10
        area = uniform(*self.scale, (b, tries), generator) * (h * w)
        aspect = torch.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), (b, tries), generator))
        eh = torch.sqrt(area * aspect).round().long()
        ew = torch.sqrt(area / aspect).round().long()
        fits = (eh < h) & (ew < w)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)
        eh, ew = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0]
        top = randint_below(h - eh + 1, generator)
        left = randint_below(w - ew + 1, generator)
        erase_it = bernoulli(self.p, b, generator) & fits.any(1)
        rects = torch.stack([left, top, left + ew, top + eh], 1) * erase_it.view(-1, 1)
        return {"rects": rects, "seeds": _seeds(self.value, b, generator)}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        return erase(images, params["rects"], self.value, params["seeds"], self.inplace), targets


class Cutout(Transform):
    """Erase a fixed-size rectangle centred on a uniform random pixel (DeVries & Taylor 2017, "Cutout").

    The rectangle may hang over the border; only its part inside the image is erased.

    Args:
        size: side of the square, or ``(height, width)``.
        p: probability that a sample is cut out.
        value: fill value(s) in the image's range, or ``"random"`` (see :func:`erase`).
    """

    def __init__(
        self, size: int | Sequence[int], p: float = 1.0, value: float | Sequence[float] | str = 0.0
    ) -> None:
        self.size = as_size(size)
        self.p = check_probability(p)
        self.value = _check_value(value)

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b, _, h, w = images.shape
        cy = randint_below(torch.full((b,), h), generator)
        cx = randint_below(torch.full((b,), w), generator)
        sh, sw = self.size
        rects = torch.stack(
            [
                (cx - sw // 2).clamp(0, w),
                (cy - sh // 2).clamp(0, h),
                (cx - sw // 2 + sw).clamp(0, w),
                (cy - sh // 2 + sh).clamp(0, h),
            ],
            1,
        )
        rects = rects * bernoulli(self.p, b, generator).view(-1, 1)
        return {"rects": rects, "seeds": _seeds(self.value, b, generator)}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        return erase(images, params["rects"], self.value, params["seeds"]), targets
