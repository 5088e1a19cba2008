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
    uniform,
)
from cnnkit.errors import ConfigError

JITTER_CHUNK_ELEMENTS = 1 << 18
"""Pixels (samples x channels x height x width) :class:`ColorJitter` processes at once on the CPU (at
least one sample)."""

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
    ``|k - 2|`` is the distance from ``h'`` to ``c = 3, 5, 1`` (R, G, B) on a circle of length 6, which
    is ``3 - ||h' - c| - 3|``, so every channel is::

        m + 2 (M - m) - (M - m) clamp(||h' - c| - 3|, 1, 2)

    computed for the three channels at once. This is the function torchvision's ``adjust_hue`` computes
    (rgb -> hsv, add, hsv -> rgb) without building the HSV image. The case split of the hue (which channel
    is largest, the first of tied ones) uses 0/1 float masks written by ``torch.eq(..., out=)``: on the CPU
    ``torch.where`` and arithmetic with boolean masks are several times slower than float arithmetic. The
    result lies in ``[m, M]`` up to float rounding.

    Args:
        x: ``(B, 3, H, W)`` floating, any non-negative range.
        shift: ``(B,)`` hue shifts in ``[-0.5, 0.5]`` turns.

    Returns:
        ``(B, 3, H, W)``, contiguous; single-channel input is returned unchanged.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    top = torch.maximum(torch.maximum(r, g), b)
    bottom = torch.minimum(torch.minimum(r, g), b)
    # M - m, kept above 0 for greys: their hue is then arbitrary and their output m + O(1e-12)
    delta = torch.sub(top, bottom).clamp_min_(1e-12)
    # hue * delta: (r - g) + 4 delta where B is largest, replaced by (b - r) + 2 delta where G is, then by
    # (g - b) where R is
    hue = (r - g).add_(delta, alpha=4.0)
    top_is = torch.empty_like(top)
    hue.addcmul_((b - r).add_(delta, alpha=2.0).sub_(hue), torch.eq(top, g, out=top_is))
    hue.addcmul_((g - b).sub_(hue), torch.eq(top, r, out=top_is))
    hue.div_(delta).add_(_per_sample(shift * 6.0, x).view(-1, 1, 1))  # in [-4, 8]
    hue.sub_(torch.mul(hue, 1.0 / 6.0, out=top_is).floor_(), alpha=6.0)  # -> [0, 6)
    phase = torch.empty_like(x)
    for channel, centre in enumerate((3.0, 5.0, 1.0)):
        torch.sub(hue, centre, out=phase[:, channel])
    phase.abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)
    base = torch.add(bottom, delta, alpha=2.0, out=top_is).unsqueeze(1)
    return torch.addcmul(base, delta.unsqueeze(1), phase, value=-1.0, out=phase)


def blend_matrices(ops: Tensor, factors: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """The affine colour maps of brightness, contrast and saturation blends, one per sample and step.

    All three are ``clamp(f x + (1 - f) r)`` with factor ``f`` and a reference ``r``: 0 for brightness,
    the sample's mean luma for contrast, the pixel's own luma for saturation. Per sample that is one affine
    map of the colour vector, ``clamp(A x + c)`` with ``A = f I`` (brightness, contrast) or
    ``f I + (1 - f) 1 luma^T`` (saturation) and ``c = (1 - f) mean luma`` (contrast) or 0, so one batched
    matrix product serves every sample whatever operation it drew, instead of one call per operation on the
    samples that drew it; the values are those of :func:`adjust_brightness`, :func:`adjust_contrast` and
    :func:`adjust_saturation` up to float rounding. Saturation leaves one-channel images unchanged.

    Args:
        ops: ``(...)`` int64: 0 brightness, 1 contrast, 2 saturation, anything else identity.
        factors: ``(...)`` blend factors (ignored for identity).
        channels: image channels, 1 or 3 (saturation leaves one channel unchanged).

    Returns:
        ``(matrix (..., C, C), contrast (...))``: the map is ``clamp(matrix @ x + contrast * mean_luma)``.
    """
    saturation = ops == 2
    identity = (ops > 2) | saturation if channels == 1 else ops > 2
    f = torch.where(identity, torch.ones((), dtype=factors.dtype), factors)
    keep = 1 - f
    matrix = torch.diag_embed(f.unsqueeze(-1).expand(*f.shape, channels))
    if channels == 3:
        luma = torch.tensor(_LUMA, dtype=factors.dtype)
        matrix = matrix + (keep * saturation)[..., None, None] * luma
    return matrix, keep * (ops == 1)


def _blend(x: Tensor, matrix: Tensor, contrast: Tensor | None, bound: float) -> Tensor:
    """``clamp(matrix @ x + contrast * mean_luma(x))`` per sample: ``x (B, C, H, W)``, ``matrix (B, C, C)``,
    ``contrast (B,)`` or ``None`` when no sample blends with its mean."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    if contrast is None:
        out = torch.bmm(matrix, flat)
    else:
        means = flat.mean(dim=2)  # the mean luma is the luma of the channel means
        mean = means @ torch.tensor(_LUMA, dtype=x.dtype, device=x.device) if c == 3 else means[:, 0]
        out = torch.bmm(matrix, flat).add_((mean * contrast).view(-1, 1, 1))  # baddbmm: slow broadcast copy
    return out.view(x.shape).clamp_(0, bound)


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
        if not enabled or not len(images):
            return images, targets
        factors, order = params["factors"], params["order"]
        position = order.argsort(dim=1)[:, enabled]  # step of each enabled op in the drawn order
        sequence = torch.tensor(enabled)[position.argsort(dim=1)]  # (B, len(enabled)) op per step
        # Samples are sorted by the step at which they rotate the hue: inside such a group every other
        # step is a blend for every sample, so each step is one call on a contiguous batch. Groups are cut
        # into chunks that keep the float working set in cache on the CPU: the steps are a few dozen passes
        # over the pixels, memory-bound once the batch is larger than the cache (see docs/benchmarks.md).
        hue_step = (
            (sequence == 3).to(torch.uint8).argmax(1)
            if 3 in enabled
            else torch.zeros(len(images), dtype=torch.long)
        )
        perm = hue_step.argsort(stable=True)
        sequence, factors, hue_step = sequence[perm], factors[perm], hue_step[perm]
        matrices, contrast = blend_matrices(
            sequence, factors.gather(1, sequence.clamp(max=2)), images.shape[1]
        )
        dtype = images.dtype if images.is_floating_point() else torch.float32
        matrices, contrast = matrices.to(images.device, dtype), contrast.to(images.device, dtype)
        has_contrast = (sequence == 1).tolist()
        source = images.index_select(0, perm.to(images.device))
        result = torch.empty_like(images)
        chunk = (
            max(1, JITTER_CHUNK_ELEMENTS // images[0].numel()) if images.device.type == "cpu" else len(images)
        )
        groups, counts = hue_step.unique_consecutive(return_counts=True)
        steps = sequence.shape[1]
        for hue_at, end, count in zip(groups.tolist(), counts.cumsum(0).tolist(), counts.tolist()):
            hue_at = hue_at if 3 in enabled else None
            for start in range(end - count, end, chunk):
                stop = min(start + chunk, end)
                x = source[start:stop].to(dtype)
                for step in range(steps):
                    if step == hue_at:
                        x = adjust_hue(x, factors[start:stop, 3])
                    else:
                        any_contrast = any(row[step] for row in has_contrast[start:stop])
                        weight = contrast[start:stop, step] if any_contrast else None
                        x = _blend(x, matrices[start:stop, step], weight, bound)
                if images.dtype == torch.uint8:
                    x = x.round_()  # every step ends in [0, 255] (up to a float ulp after the hue)
                elif hue_at == steps - 1:
                    x = x.clamp_(0, bound)
                result[start:stop] = x
        return result.index_select(0, perm.argsort().to(images.device)), targets


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
