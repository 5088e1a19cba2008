"""Colour transforms on a batch with per-sample factors, and the pixel operations they are built from.

The ``adjust_*`` functions take a floating batch in the value range ``[0, bound]`` (``bound`` 255 for data
that came from uint8, 1 otherwise) and one factor per sample, and clamp to ``[0, bound]`` like torchvision.
Formulas follow torchvision / PIL ``ImageEnhance``: ``blend(a, b, f) = f * a + (1 - f) * b``.
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
    max_value,
    restore_dtype,
    uniform,
)
from cnnkit.errors import ConfigError

JITTER_CHUNK_ELEMENTS = 1 << 18
"""Pixels (samples x channels x height x width) :class:`ColorJitter` processes at once on the CPU."""

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
    ``h`` in sextants ``[0, 6)`` shifted to ``h' = h + 6 shift`` (wrapped into ``[0, 6)``), channel ``n``
    (5 for R, 3 for G, 1 for B) is ``m + (M - m) clamp(|k - 2| - 1, 0, 1)`` with ``k = (n + h') mod 6``.
    On ``[0, 6)`` that clamp is ``clamp(d - 1, 0, 1)`` with ``d`` the distance from ``n + h'`` to the
    nearest of ``2 + 6j``, which gives each channel without a modulo::

        R = m + (M - m) clamp(|h' - 3| - 1, 0, 1)
        G = m + (M - m) clamp(min(h' + 1, |h' - 5|) - 1, 0, 1)
        B = m + (M - m) clamp(min(|h' - 1|, 7 - h') - 1, 0, 1)

    This is the function torchvision's ``adjust_hue`` computes (rgb -> hsv, add, hsv -> rgb) without
    building the HSV image; the hue's case split (which channel is largest) uses masks rather than
    ``torch.where``, whose CPU kernel is several times slower than arithmetic. The hue is continuous where
    two channels tie for the largest, so the tie order does not matter.

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
    red_top = top == r
    green_top = (top == g) & ~red_top
    blue_top = ~(red_top | green_top)
    # hue * delta: (g - b) if R is largest, (b - r) + 2 delta if G is, (r - g) + 4 delta if B is
    hue = (g - b).mul_(red_top)
    hue.addcmul_((b - r).add_(delta, alpha=2.0), green_top)
    hue.addcmul_((r - g).add_(delta, alpha=4.0), blue_top)
    hue.div_(delta.clamp_min(1e-12)).add_(_per_sample(shift * 6.0, x).view(-1, 1, 1))
    hue.sub_(torch.floor(hue * (1.0 / 6.0)), alpha=6.0)  # [-3, 9) -> [0, 6)
    out = torch.empty_like(x)
    torch.addcmul(bottom, delta, (hue - 3.0).abs_().sub_(1.0).clamp_(0.0, 1.0), out=out[:, 0])
    torch.addcmul(
        bottom, delta, torch.minimum(hue + 1.0, (hue - 5.0).abs_()).sub_(1.0).clamp_(0.0, 1.0), out=out[:, 1]
    )
    torch.addcmul(
        bottom, delta, torch.minimum((hue - 1.0).abs_(), 7.0 - hue).sub_(1.0).clamp_(0.0, 1.0), out=out[:, 2]
    )
    return out


def blend_step(x: Tensor, ops: Tensor, factors: Tensor, bound: float) -> Tensor:
    """One brightness, contrast or saturation blend per sample, for the whole batch in one pass.

    All three are ``clamp(f x + (1 - f) r)`` with factor ``f`` and a reference ``r``: 0 for brightness,
    the sample's mean luma for contrast, the pixel's own luma for saturation. Computing
    ``f x + (1 - f) r`` with a per-sample ``f`` (1 for identity samples) and a per-sample mix of the
    references serves every sample at once, instead of one call per operation on the samples that drew it;
    the values are those of :func:`adjust_brightness`, :func:`adjust_contrast` and
    :func:`adjust_saturation` up to float rounding.

    Args:
        x: ``(B, C, H, W)`` floating, ``C`` 1 or 3, in ``[0, bound]``.
        ops: ``(B,)`` int64, per sample 0 brightness, 1 contrast, 2 saturation, anything else identity.
        factors: ``(B,)`` blend factors (ignored for identity samples).
        bound: the value of white (clamp range ``[0, bound]``).

    Returns:
        ``(B, C, H, W)``, a new tensor.
    """
    ops = ops.to(x.device)
    blend = ops <= 2
    f = torch.where(
        blend, factors.to(device=x.device, dtype=x.dtype), torch.ones((), dtype=x.dtype, device=x.device)
    )
    weight = (1 - f).view(-1, 1, 1)
    out = x * f.view(-1, 1, 1, 1)
    reference = None
    saturation = ops == 2
    if x.shape[1] == 3 and bool(saturation.any()):
        luma = x[:, 0] * _LUMA[0]
        luma.add_(x[:, 1], alpha=_LUMA[1]).add_(x[:, 2], alpha=_LUMA[2])
        reference = luma.mul_(weight * saturation.view(-1, 1, 1))
    contrast = ops == 1
    if bool(contrast.any()):
        means = x.mean(dim=(2, 3))
        mean = means @ torch.tensor(_LUMA, dtype=x.dtype, device=x.device) if x.shape[1] == 3 else means[:, 0]
        shift = (
            mean.view(-1, 1, 1) * weight * contrast.view(-1, 1, 1)
        )  # the mean luma is the luma of the means
        reference = shift if reference is None else reference.add_(shift)
    if reference is not None:
        out += reference.unsqueeze(1)
    return out.clamp_(0, bound)


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
        enabled = [i for i, rng in enumerate(self._ranges()) if rng is not None]
        if not enabled:
            return images, targets
        factors, order = params["factors"], params["order"]
        position = order.argsort(dim=1)[:, enabled]  # step of each enabled op in the drawn order
        sequence = torch.tensor(enabled)[position.argsort(dim=1)]  # (B, len(enabled)) op per step
        # Chunks of samples keep the float working set in cache: the steps are a few dozen passes over the
        # pixels, memory-bound once the batch is larger than the cache (see docs/benchmarks.md).
        per_sample = images[0].numel() if len(images) else 1
        chunks = (
            math.ceil(len(images) * per_sample / JITTER_CHUNK_ELEMENTS) if images.device.type == "cpu" else 1
        )
        chunk = max(1, math.ceil(len(images) / max(chunks, 1)))  # equal chunks, none left nearly empty
        out = torch.empty_like(images)
        for start in range(0, len(images), chunk):
            stop = min(start + chunk, len(images))
            x = self._jitter(images[start:stop], sequence[start:stop], factors[start:stop], bound)
            out[start:stop] = restore_dtype(x, images.dtype)
        return out, targets

    @staticmethod
    def _jitter(images: Tensor, sequence: Tensor, factors: Tensor, bound: float) -> Tensor:
        """The jitter of a chunk in float: at step k, one :func:`blend_step` for the samples whose k-th
        enabled operation is a blend, and the hue rotation on those whose k-th is the hue (at most two
        calls a step, whatever the number of samples)."""
        x = images.float() if images.dtype == torch.uint8 else images.clone()
        rows = torch.arange(len(sequence))
        for step in range(sequence.shape[1]):
            ops = sequence[:, step]
            if bool((ops <= 2).any()):
                x = blend_step(x, ops, factors[rows, ops.clamp(max=2)], bound)
            hue = (ops == 3).nonzero()[:, 0]
            if len(hue) == len(sequence):
                x = adjust_hue(x, factors[:, 3]).clamp_(0, bound)
            elif len(hue):
                dev_idx = hue.to(x.device)
                x.index_copy_(
                    0, dev_idx, adjust_hue(x.index_select(0, dev_idx), factors[hue, 3]).clamp_(0, bound)
                )
        return x


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
