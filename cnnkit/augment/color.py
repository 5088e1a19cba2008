"""Colour transforms on a batch with per-sample factors, and the pixel operations they are built from.

The ``adjust_*`` functions take a floating batch in the value range ``[0, bound]`` (``bound`` 255 for data
that came from uint8, 1 otherwise) and one factor per sample, and clamp to ``[0, bound]`` like torchvision.
Formulas follow torchvision / PIL ``ImageEnhance``: ``blend(a, b, f) = f * a + (1 - f) * b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cnnkit.augment.base import (
    Params,
    Targets,
    Transform,
    as_range,
    max_value,
    restore_dtype,
    uniform,
)
from cnnkit.errors import ConfigError

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


def _per_sample(factor: Tensor, x: Tensor) -> Tensor:
    return factor.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` (``(B, 3, H, W) -> (B, 1, H, W)``; one channel is returned as is)."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def adjust_brightness(x: Tensor, factor: Tensor, bound: float) -> Tensor:
    """``clamp(f * x)``: blend with black."""
    return (x * _per_sample(factor, x)).clamp_(0, bound)


def adjust_contrast(x: Tensor, factor: Tensor, bound: float) -> Tensor:
    """``clamp(f * x + (1 - f) * mean(gray(x)))``: blend with the sample's mean grey level."""
    f = _per_sample(factor, x)
    channel_means = x.mean(dim=(2, 3))
    if x.shape[1] == 3:  # the mean of the luma is the luma of the channel means
        mean = channel_means @ torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
    else:
        mean = channel_means[:, 0]
    return (x * f).add_(mean.view(-1, 1, 1, 1) * (1 - f)).clamp_(0, bound)


def adjust_saturation(x: Tensor, factor: Tensor, bound: float) -> Tensor:
    """``clamp(f * x + (1 - f) * gray(x))``: blend with the sample's own greyscale image."""
    if x.shape[1] == 1:
        return x
    f = _per_sample(factor, x)
    return (x * f).add_(grayscale(x) * (1 - f)).clamp_(0, bound)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of every pixel by ``shift`` turns (one shift per sample), exactly.

    A hue rotation keeps each pixel's largest channel ``M`` and smallest ``m``, so the HSV round trip reduces
    to a closed form (hsv-to-rgb as written on Wikipedia's "HSL and HSV", after Smith 1978): with the hue
    ``h`` in sextants ``[0, 6)`` shifted to ``h' = h + 6 shift``, channel ``n`` (5 for R, 3 for G, 1 for B)
    is ``M - (M - m) clamp(min(k, 4 - k), 0, 1) = m + (M - m) clamp(|k - 2| - 1, 0, 1)`` with
    ``k = (n + h') mod 6``. This is the function torchvision's ``adjust_hue`` computes (rgb -> hsv, add,
    hsv -> rgb) without building the HSV image, so it costs a few passes over the pixels.

    Args:
        x: ``(B, 3, H, W)`` floating, any non-negative range.
        shift: ``(B,)`` hue shifts in ``[-0.5, 0.5]`` turns.

    Returns:
        ``(B, 3, H, W)``; single-channel input is returned unchanged.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    top = torch.maximum(torch.maximum(r, g), b)
    bottom = torch.minimum(torch.minimum(r, g), b)
    delta = top - bottom
    # hue * delta: (g - b) if R is largest, (b - r) + 2 delta if G is, (r - g) + 4 delta otherwise
    hue = torch.where(top == g, (b - r).add_(delta, alpha=2.0), (r - g).add_(delta, alpha=4.0))
    hue = torch.where(top == r, g - b, hue).div_(delta.clamp_min(1e-12))
    hue.add_(_per_sample(shift * 6.0, x).view(-1, 1, 1))
    out = torch.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = (hue + n).remainder_(6.0)
        k.sub_(2.0).abs_().sub_(1.0).clamp_(0.0, 1.0).mul_(delta).add_(bottom)
        out[:, channel] = k
    return out


class ColorJitter(Transform):
    """Random brightness, contrast, saturation and hue, each factor drawn per sample.

    Like torchvision's ``ColorJitter``, the enabled operations run in a random order, drawn per sample, and
    each result is clamped to the valid range. Factors: brightness, contrast and saturation ``f ~ U(range)``
    (a number ``v`` means ``[max(0, 1 - v), 1 + v]``), hue shift ``U(-v, v)`` turns with ``v <= 0.5``. uint8
    images are computed in float and rounded once at the end (torchvision truncates after every step, so
    uint8 results can differ by a level or two).

    Args:
        brightness: how much to jitter brightness (number or ``(min, max)`` factor range).
        contrast: how much to jitter contrast.
        saturation: how much to jitter saturation.
        hue: how much to shift hue, ``0 <= v <= 0.5`` or a range inside ``[-0.5, 0.5]``.
    """

    def __init__(
        self,
        brightness: float | Sequence[float] | None = None,
        contrast: float | Sequence[float] | None = None,
        saturation: float | Sequence[float] | None = None,
        hue: float | Sequence[float] | None = None,
    ) -> None:
        self.brightness = self._factor_range(brightness, "brightness")
        self.contrast = self._factor_range(contrast, "contrast")
        self.saturation = self._factor_range(saturation, "saturation")
        self.hue = None
        if hue is not None:
            low, high = as_range(hue, "hue")
            if low < -0.5 or high > 0.5:
                raise ConfigError(f"hue must lie in [-0.5, 0.5], got {hue}")
            self.hue = None if (low, high) == (0.0, 0.0) else (low, high)

    @staticmethod
    def _factor_range(value: float | Sequence[float] | None, name: str) -> tuple[float, float] | None:
        if value is None:
            return None
        low, high = as_range(value, name, center=1.0)
        low = max(low, 0.0) if isinstance(value, (int, float)) else low
        if low < 0:
            raise ConfigError(f"{name} factors must be non-negative, got {value}")
        return None if (low, high) == (1.0, 1.0) else (low, high)

    def _ranges(self) -> list[tuple[float, float] | None]:
        return [self.brightness, self.contrast, self.saturation, self.hue]

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b = images.shape[0]
        factors = torch.zeros(b, 4, dtype=torch.float64)
        for i, rng in enumerate(self._ranges()):
            if rng is not None:
                factors[:, i] = uniform(*rng, b, generator)
        order = torch.rand(b, 4, generator=generator).argsort(dim=1)
        return {"factors": factors, "order": order}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        bound = max_value(images)
        ops = (
            lambda x, f: adjust_brightness(x, f, bound),
            lambda x, f: adjust_contrast(x, f, bound),
            lambda x, f: adjust_saturation(x, f, bound),
            lambda x, f: adjust_hue(x, f).clamp_(0, bound),
        )
        enabled = [i for i, rng in enumerate(self._ranges()) if rng is not None]
        factors, order = params["factors"], params["order"]
        x = images.float() if images.dtype == torch.uint8 else images.clone()
        # Step by step: at step k, each enabled operation runs once, batched, on the samples whose k-th
        # operation it is (16 batched calls at most, whatever the batch size).
        for step in range(4):
            for op in enabled:
                chosen = order[:, step] == op
                count = int(chosen.sum())
                if count == x.shape[0]:
                    x = ops[op](x, factors[:, op])
                elif count:
                    idx = chosen.nonzero()[:, 0]
                    dev_idx = idx.to(x.device)
                    x.index_copy_(0, dev_idx, ops[op](x.index_select(0, dev_idx), factors[idx, op]))
        return restore_dtype(x, images.dtype), targets


class Normalize(Transform):
    """``(x - mean) / std`` per channel; uint8 images are first scaled to float in [0, 1].

    Args:
        mean: per-channel means.
        std: per-channel standard deviations (non-zero).
        inplace: normalise floating input in place (uint8 input always gets a new float tensor).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if any(s == 0 for s in self.std):
            raise ConfigError(f"std must be non-zero, got {self.std}")
        self.inplace = inplace

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if self.inplace and x is images:
            return x.sub_(mean).div_(std), targets
        return (x - mean) / std, targets
