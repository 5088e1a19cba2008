"""Augmentation policies: RandAugment (Cubuk et al. 2020) and AutoAugment (Cubuk et al. 2019), batched.

Every sample draws its own operations; the batch is then processed one operation at a time on the samples
that drew it, so each operation is a single batched call. Operations and magnitude ranges are those of the
papers as implemented by torchvision (magnitude bin ``k`` of ``num_bins`` picks ``linspace(low, high)[k]``;
signed operations get a random sign per sample). Geometric operations move boxes and masks like the
transforms in :mod:`cnnkit.augment.geometric`. uint8 images stay on integer levels between operations
(results are rounded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnkit.augment.base import Params, Targets, Transform, max_value, restore_dtype
from cnnkit.augment.color import adjust_brightness, adjust_contrast, adjust_saturation
from cnnkit.augment.geometric import interpolation_mode, rotation_inverse, warp
from cnnkit.errors import ConfigError


def _linspace(low: float, high: float) -> Callable[[int, int, int], Tensor]:
    return lambda bins, h, w: torch.linspace(low, high, bins, dtype=torch.float64)


# name -> (magnitudes(num_bins, H, W) or None, signed)
_SPACE: dict[str, tuple] = {
    "Identity": (None, False),
    "ShearX": (_linspace(0.0, 0.3), True),
    "ShearY": (_linspace(0.0, 0.3), True),
    "TranslateX": (
        lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * w, bins, dtype=torch.float64),
        True,
    ),
    "TranslateY": (
        lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * h, bins, dtype=torch.float64),
        True,
    ),
    "Rotate": (_linspace(0.0, 30.0), True),
    "Brightness": (_linspace(0.0, 0.9), True),
    "Color": (_linspace(0.0, 0.9), True),
    "Contrast": (_linspace(0.0, 0.9), True),
    "Sharpness": (_linspace(0.0, 0.9), True),
    "Posterize": (
        lambda bins, h, w: 8 - (torch.arange(bins, dtype=torch.float64) / ((bins - 1) / 4)).round(),
        False,
    ),
    "Solarize": (_linspace(1.0, 0.0), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
    "Invert": (None, False),
}
OPS = tuple(_SPACE)
RAND_AUGMENT_OPS = OPS[:-1]

# The ImageNet policy of AutoAugment (Cubuk et al. 2019, appendix): 25 sub-policies of two
# (operation, probability, magnitude bin out of 10) steps.
IMAGENET_POLICY: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


def magnitudes(name: str, num_bins: int, size: tuple[int, int]) -> Tensor | None:
    """The ``num_bins`` magnitudes of operation ``name`` for images of ``size`` (``None``: no magnitude)."""
    values, _ = _SPACE[name]
    return None if values is None else values(num_bins, *size)


def posterize(x: Tensor, bits: Tensor, bound: float) -> Tensor:
    """Keep the top ``bits`` bits: uint8 levels ``floor(x / 2^(8-bits)) 2^(8-bits)``; floats
    ``min(floor(x 2^bits), 2^bits - 1) / 2^bits`` (torchvision's rule)."""
    b = bits.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    if bound == 255.0:
        step = torch.pow(2.0, 8.0 - b)
        return torch.div(x, step, rounding_mode="floor") * step
    levels = torch.pow(2.0, b)
    return torch.minimum((x * levels).floor_(), levels - 1) / levels


def solarize(x: Tensor, threshold: Tensor, bound: float) -> Tensor:
    """Invert the pixels at or above ``threshold`` (one per sample): ``bound - x`` where ``x >= t``."""
    t = threshold.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    return torch.where(x >= t, bound - x, x)


def autocontrast(x: Tensor, bound: float) -> Tensor:
    """Stretch every channel of every sample to ``[0, bound]``: ``(x - min) * bound / (max - min)``."""
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    scale = torch.where(flat, torch.ones_like(high), bound / (high - low).clamp_min(1e-12))
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((x - low) * scale).clamp_(0, bound)


def equalize(x: Tensor, bound: float) -> Tensor:
    """Histogram equalisation per channel and sample, with PIL's ``ImageOps.equalize`` lookup table.

    On 256 levels: ``step = (N - count of the last used level) // 255`` and
    ``lut[i] = (step // 2 + number of pixels below level i) // step``; channels with ``step == 0`` are kept.
    """
    b, c, h, w = x.shape
    levels = (x * (255.0 / bound)).round_().clamp_(0, 255).long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels)
    )
    used = torch.arange(256, device=x.device).expand_as(hist) * (hist > 0)
    last = hist.gather(1, used.amax(1, keepdim=True))
    step = (h * w - last) // 255
    below = hist.cumsum(1) - hist
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp_(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
    return lut.gather(1, levels).view(b, c, h, w).to(x.dtype) * (bound / 255.0)


def adjust_sharpness(x: Tensor, factor: Tensor, bound: float) -> Tensor:
    """Blend with PIL's SMOOTH-filtered image (kernel ``[[1,1,1],[1,5,1],[1,1,1]] / 13``, border pixels
    kept): ``clamp(f x + (1 - f) smooth(x))``."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    f = factor.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    return (x * f).add_(smooth * (1 - f)).clamp_(0, bound)


def _affine_inverse(name: str, mag: Tensor, size: tuple[int, int]) -> Tensor:
    """Output-to-input maps ``(n, 2, 3)`` of the shear / translate / rotate operations (torchvision's
    conventions: shears about the top-left corner, ``x' = x - m y``; translations truncated to pixels)."""
    h, w = size
    if name == "Rotate":
        return rotation_inverse(mag, w / 2.0, h / 2.0)
    a = torch.zeros(mag.shape[0], 2, 3, dtype=torch.float64)
    a[:, 0, 0] = a[:, 1, 1] = 1.0
    if name == "ShearX":
        a[:, 0, 1] = mag
    elif name == "ShearY":
        a[:, 1, 0] = mag
    elif name == "TranslateX":
        a[:, 0, 2] = -mag.trunc()
    else:
        a[:, 1, 2] = -mag.trunc()
    return a


def apply_op(
    name: str, x: Tensor, mag: Tensor, bound: float, targets: Targets, mode: str, fill: object
) -> tuple[Tensor, Targets]:
    """Apply operation ``name`` with per-sample magnitudes ``mag`` to a float batch in ``[0, bound]``."""
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        size = (x.shape[-2], x.shape[-1])
        return warp(x, targets, _affine_inverse(name, mag, size), size, mode, fill)
    if name == "Brightness":
        return adjust_brightness(x, 1.0 + mag, bound), targets
    if name == "Color":
        return adjust_saturation(x, 1.0 + mag, bound), targets
    if name == "Contrast":
        return adjust_contrast(x, 1.0 + mag, bound), targets
    if name == "Sharpness":
        return adjust_sharpness(x, 1.0 + mag, bound), targets
    if name == "Posterize":
        return posterize(x, mag, bound), targets
    if name == "Solarize":
        return solarize(x, mag * bound, bound), targets
    if name == "AutoContrast":
        return autocontrast(x, bound), targets
    if name == "Equalize":
        return equalize(x, bound), targets
    if name == "Invert":
        return bound - x, targets
    return x, targets


class _Policy(Transform):
    """Runs per-sample operation tables ``ops (B, S)`` (indices into ``OPS``) with magnitudes ``(B, S)``."""

    def __init__(self, interpolation: object, fill: object) -> None:
        self.interpolation = interpolation_mode(interpolation)
        self.fill = fill

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        ops, mags = params["ops"], params["magnitudes"]
        bound = max_value(images)
        x = images.float() if images.dtype == torch.uint8 else images.clone()
        targets = list(targets) if isinstance(targets, list) else targets
        for slot in range(ops.shape[1]):
            for op in ops[:, slot].unique().tolist():
                name = OPS[op]
                if name == "Identity":
                    continue
                idx = (ops[:, slot] == op).nonzero()[:, 0]
                sub_targets = [targets[i] for i in idx.tolist()] if isinstance(targets, list) else None
                dev_idx = idx.to(x.device)
                out, sub_targets = apply_op(
                    name,
                    x.index_select(0, dev_idx),
                    mags[idx, slot],
                    bound,
                    sub_targets,
                    self.interpolation,
                    self.fill,
                )
                x.index_copy_(0, dev_idx, out.round_() if bound == 255.0 else out)
                if sub_targets is not None:
                    for i, t in zip(idx.tolist(), sub_targets):
                        targets[i] = t
        return restore_dtype(x, images.dtype), targets


def _signed(name: str, values: Tensor, generator: torch.Generator | None) -> Tensor:
    if not _SPACE[name][1]:
        return values
    flip = torch.rand(values.shape, generator=generator) < 0.5
    return torch.where(flip, -values, values)


class RandAugment(_Policy):
    """RandAugment (Cubuk et al. 2020): each sample applies ``num_ops`` operations drawn uniformly from 14
    (Identity, ShearX/Y, TranslateX/Y, Rotate, Brightness, Color, Contrast, Sharpness, Posterize, Solarize,
    AutoContrast, Equalize), all at magnitude bin ``magnitude`` of ``num_magnitude_bins``.

    Args:
        num_ops: operations per sample (N in the paper).
        magnitude: magnitude bin (M in the paper), ``0 <= magnitude < num_magnitude_bins``.
        num_magnitude_bins: number of magnitude bins.
        interpolation: ``"nearest"`` (default, as torchvision) or ``"bilinear"`` for geometric operations.
        fill: value(s) for areas moved in from outside the image.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        interpolation: object = "nearest",
        fill: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__(interpolation, fill)
        if num_ops < 0 or not 0 <= magnitude < num_magnitude_bins:
            raise ConfigError(
                f"need num_ops >= 0 and 0 <= magnitude < num_magnitude_bins, got {num_ops}, {magnitude}, "
                f"{num_magnitude_bins}"
            )
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.num_magnitude_bins = num_magnitude_bins

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b, size = images.shape[0], (images.shape[-2], images.shape[-1])
        choice = torch.randint(0, len(RAND_AUGMENT_OPS), (b, self.num_ops), generator=generator)
        ops = torch.tensor([OPS.index(n) for n in RAND_AUGMENT_OPS])[choice]
        mags = torch.zeros(b, self.num_ops, dtype=torch.float64)
        for i, name in enumerate(RAND_AUGMENT_OPS):
            values = magnitudes(name, self.num_magnitude_bins, size)
            chosen = choice == i
            if values is not None and bool(chosen.any()):
                mags[chosen] = _signed(name, values[self.magnitude].expand(int(chosen.sum())), generator)
        return {"ops": ops, "magnitudes": mags}


class AutoAugment(_Policy):
    """AutoAugment (Cubuk et al. 2019) with its published ImageNet policy: each sample draws one of 25
    sub-policies and applies its two operations, each with the sub-policy's probability and magnitude bin
    (10 bins).

    Args:
        policy: ``"imagenet"`` (the only policy shipped), or torchvision's ``AutoAugmentPolicy.IMAGENET``.
        interpolation: ``"nearest"`` (default) or ``"bilinear"`` for geometric operations.
        fill: value(s) for areas moved in from outside the image.
    """

    num_bins = 10

    def __init__(
        self,
        policy: object = "imagenet",
        interpolation: object = "nearest",
        fill: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__(interpolation, fill)
        name = str(getattr(policy, "value", policy)).lower()
        if name != "imagenet":
            raise ConfigError(f"AutoAugment policy must be 'imagenet', got {policy!r}")
        self.policy = name

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b, size = images.shape[0], (images.shape[-2], images.shape[-1])
        which = torch.randint(0, len(IMAGENET_POLICY), (b,), generator=generator)
        draw = torch.rand(b, 2, generator=generator, dtype=torch.float64)
        ops = torch.zeros(b, 2, dtype=torch.long)
        mags = torch.zeros(b, 2, dtype=torch.float64)
        for i, s in enumerate(which.tolist()):
            for k, (name, prob, bin_) in enumerate(IMAGENET_POLICY[s]):
                if draw[i, k] < prob:
                    ops[i, k] = OPS.index(name)
                    values = magnitudes(name, self.num_bins, size)
                    if values is not None:
                        mags[i, k] = _signed(name, values[bin_].view(1), generator)[0]
        return {"ops": ops, "magnitudes": mags, "policy": which}
