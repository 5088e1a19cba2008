"""Geometric transforms on a batch: one ``grid_sample`` call warps every sample with its own affine map.

Coordinates are continuous pixels: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` and its value sits at the
centre ``(j + 0.5, i + 0.5)``; boxes use the same frame, so a box around pixels 2..4 is ``x1 = 2, x2 = 5``.
Each transform builds, per sample, the inverse map ``A`` (2x3) from output to input coordinates; images are
sampled at ``A @ (x_out, y_out, 1)`` for every output pixel centre (``grid_sample``, ``align_corners=False``,
the convention of ``torch.nn.functional.interpolate`` and torchvision), masks with nearest sampling (the
input pixel that contains the sampled point, i.e. torchvision's ``NEAREST_EXACT``), and box corners with the
forward map ``A^-1``; a rotated box becomes the enclosing box of its four corners. Boxes are then clipped and
filtered by :func:`cnnkit.augment.base.filter_boxes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnkit.augment.base import (
    Params,
    Targets,
    Transform,
    as_range,
    as_size,
    bernoulli,
    check_probability,
    filter_boxes,
    randint_below,
    restore_dtype,
    to_float,
    uniform,
)
from cnnkit.errors import ConfigError

_MODES = ("nearest", "bilinear")


def interpolation_mode(interpolation: object) -> str:
    """``"nearest"`` or ``"bilinear"`` from a string or a torchvision ``InterpolationMode``."""
    name = str(getattr(interpolation, "value", interpolation)).lower()
    if name not in _MODES:
        raise ConfigError(f"interpolation must be one of {_MODES}, got {interpolation!r}")
    return name


def _grid(
    inverse: Tensor,
    out_size: tuple[int, int],
    in_size: tuple[int, int],
    offset: tuple[Tensor, Tensor] | None = None,
    clamp: Tensor | None = None,
) -> Tensor:
    """Sampling grid ``(B, oh, ow, 2)`` in ``grid_sample``'s normalised coordinates.

    Args:
        inverse: ``(B, 2, 3)`` output-to-input affine maps in continuous pixel coordinates.
        out_size: output ``(oh, ow)``.
        in_size: input ``(H, W)``.
        offset: per-sample ``(dx, dy)`` shifts of the sample point inside the output pixel, in output pixels.
        clamp: ``(B, 4)`` per-sample ``(x_lo, y_lo, x_hi, y_hi)`` limits of the sampled input coordinates.
    """
    oh, ow = out_size
    h, w = in_size
    a = inverse.to(torch.float32)
    xs = torch.arange(ow, device=a.device, dtype=torch.float32).add_(0.5).view(1, 1, ow)
    ys = torch.arange(oh, device=a.device, dtype=torch.float32).add_(0.5).view(1, oh, 1)
    if offset is not None:
        xs = xs + offset[0].to(a).view(-1, 1, 1)
        ys = ys + offset[1].to(a).view(-1, 1, 1)

    def coeff(r: int, c: int) -> Tensor:
        return a[:, r, c].view(-1, 1, 1)

    x_in = coeff(0, 0) * xs + coeff(0, 1) * ys + coeff(0, 2)
    y_in = coeff(1, 0) * xs + coeff(1, 1) * ys + coeff(1, 2)
    if clamp is not None:
        lim = clamp.to(a).view(-1, 4, 1, 1)
        x_in = torch.minimum(torch.maximum(x_in, lim[:, 0]), lim[:, 2])
        y_in = torch.minimum(torch.maximum(y_in, lim[:, 1]), lim[:, 3])
    return torch.stack([x_in.mul_(2.0 / w).sub_(1.0), y_in.mul_(2.0 / h).sub_(1.0)], dim=-1)


def _fill_values(fill: float | Sequence[float] | None, images: Tensor) -> Tensor | None:
    """Per-channel fill ``(1, C, 1, 1)`` for the area outside the input, or ``None`` for zero fill."""
    if fill is None:
        return None
    values = torch.as_tensor(fill, dtype=torch.float32, device=images.device).flatten()
    if not bool(values.any()):
        return None
    return (
        values.expand(images.shape[1]).reshape(1, -1, 1, 1)
        if values.numel() == 1
        else values.view(1, -1, 1, 1)
    )


def warp(
    images: Tensor,
    targets: Targets,
    inverse: Tensor,
    out_size: tuple[int, int],
    mode: str = "bilinear",
    fill: float | Sequence[float] | None = None,
    clamp: Tensor | None = None,
    supersample: Tensor | None = None,
) -> tuple[Tensor, Targets]:
    """Warp a batch and its targets with per-sample affine maps.

    Args:
        images: ``(B, C, H, W)`` uint8 or float.
        targets: ``None``, labels, or one dict per sample (boxes, masks and mask are moved).
        inverse: ``(B, 2, 3)`` maps from output to input continuous pixel coordinates.
        out_size: output ``(oh, ow)``.
        mode: ``"bilinear"`` or ``"nearest"`` for images (masks are always nearest).
        fill: value(s) for pixels that map outside the input (0 when ``None``).
        clamp: ``(B, 4)`` limits of the sampled coordinates (keeps a crop from reading past its edges).
        supersample: ``(B, 2)`` sample counts ``(nx, ny)`` per output pixel; the image value is the mean of
            ``nx * ny`` bilinear samples spread evenly over the pixel (anti-aliasing for downscaling, the
            rule of ``roi_align``'s ``sampling_ratio``).

    Returns:
        ``(images, targets)``; images keep their dtype (uint8 results are rounded).

    Shape:
        images ``(B, C, H, W) -> (B, C, oh, ow)``; masks ``(N, H, W) -> (N, oh, ow)``.
    """
    b, _, h, w = images.shape
    inverse = inverse.to(images.device)
    work = to_float(images)
    fill_values = _fill_values(fill, images)
    if fill_values is not None:
        work = torch.cat([work, torch.ones_like(work[:, :1])], dim=1)
    if supersample is None or int(supersample.max()) == 1:
        out = F.grid_sample(work, _grid(inverse, out_size, (h, w), None, clamp), mode, "zeros", False)
    else:
        counts = supersample.to(torch.float32)
        out = 0
        for kx in range(int(supersample[:, 0].max())):
            for ky in range(int(supersample[:, 1].max())):
                k = torch.tensor([kx, ky], dtype=torch.float32)
                offset = (k + 0.5) / counts - 0.5
                weight = ((k < counts).all(1) / counts.prod(1)).to(work).view(-1, 1, 1, 1)
                grid = _grid(inverse, out_size, (h, w), (offset[:, 0], offset[:, 1]), clamp)
                out = out + weight * F.grid_sample(work, grid, mode, "zeros", False)
    if fill_values is not None:
        out, inside = out[:, :-1], out[:, -1:]
        out = out + (1.0 - inside) * fill_values * (255.0 if images.dtype == torch.uint8 else 1.0)
    out = restore_dtype(out, images.dtype)
    if not isinstance(targets, list):
        return out, targets
    return out, _warp_targets(targets, inverse, out_size, (h, w), clamp)


def _warp_targets(
    targets: list[dict[str, Tensor]],
    inverse: Tensor,
    out_size: tuple[int, int],
    in_size: tuple[int, int],
    clamp: Tensor | None,
) -> list[dict[str, Tensor]]:
    """Move boxes (forward map of the corners) and masks (nearest sampling) of every target."""
    grid = None
    per_sample_masks: list[Tensor | None] = [None] * len(targets)
    instance = [i for i, t in enumerate(targets) if "masks" in t and t["masks"].shape[0] > 0]
    semantic = [i for i, t in enumerate(targets) if "mask" in t]
    if instance or semantic:
        grid = _grid(inverse, out_size, in_size, None, clamp)
    if instance:
        masks = torch.cat([targets[i]["masks"] for i in instance])
        owner = torch.repeat_interleave(
            torch.tensor(instance), torch.tensor([targets[i]["masks"].shape[0] for i in instance])
        ).to(grid.device)
        moved = F.grid_sample(masks.unsqueeze(1).float(), grid[owner], "nearest", "zeros", False)
        moved = moved.squeeze(1).to(masks.dtype).split([targets[i]["masks"].shape[0] for i in instance])
        for i, m in zip(instance, moved):
            per_sample_masks[i] = m
    new_semantic = {}
    if semantic:
        masks = torch.stack([targets[i]["mask"] for i in semantic])
        moved = F.grid_sample(
            masks.unsqueeze(1).float(), grid[torch.tensor(semantic)], "nearest", "zeros", False
        )
        new_semantic = dict(zip(semantic, moved.squeeze(1).to(masks.dtype)))

    square = torch.eye(3, dtype=torch.float64).repeat(inverse.shape[0], 1, 1)
    square[:, :2] = inverse.to(torch.float64).cpu()
    forward = torch.linalg.inv(square)[:, :2]
    out = []
    for i, target in enumerate(targets):
        new = dict(target)
        if i in new_semantic:
            new["mask"] = new_semantic[i]
        if "boxes" in target:
            masks = per_sample_masks[i] if "masks" in target and per_sample_masks[i] is not None else None
            if masks is None and "masks" in target:
                masks = target["masks"].new_zeros((0, *out_size))
            new = filter_boxes(new, transform_boxes(target["boxes"], forward[i]), out_size, masks)
        elif per_sample_masks[i] is not None:
            new["masks"] = per_sample_masks[i]
        out.append(new)
    return out


def transform_boxes(boxes: Tensor, forward: Tensor) -> Tensor:
    """The axis-aligned box enclosing the four mapped corners of each box.

    Args:
        boxes: ``(N, 4)`` xyxy.
        forward: ``(2, 3)`` input-to-output affine map.

    Returns:
        ``(N, 4)`` xyxy boxes (not clipped), same dtype and device as ``boxes``.
    """
    m = forward.to(device=boxes.device, dtype=torch.float64)
    x1, y1, x2, y2 = boxes.to(torch.float64).unbind(1)
    xs = torch.stack([x1, x2, x1, x2], dim=1)
    ys = torch.stack([y1, y1, y2, y2], dim=1)
    tx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    ty = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    out = torch.stack([tx.amin(1), ty.amin(1), tx.amax(1), ty.amax(1)], dim=1)
    return out.to(boxes.dtype if boxes.is_floating_point() else torch.float32)


def _resize_kernel(mode: str, antialias: bool) -> Callable[..., Tensor]:
    """The ATen kernel that ``F.interpolate`` dispatches to for ``mode`` (with ``align_corners=False``).

    Called directly, with ``out=`` into the batch's output, because for the many small crops of a CPU
    batch ``F.interpolate``'s argument checks and the final ``torch.cat`` cost about as much as the
    resizing (a quarter of the crop time for 256 crops of 40x40 images to 32, ``docs/benchmarks.md``)."""
    nn_ops = torch._C._nn
    if mode == "nearest":
        return lambda x, size, out: nn_ops._upsample_nearest_exact2d(x, size, None, None, out=out)
    kernel = nn_ops._upsample_bilinear2d_aa if antialias else nn_ops.upsample_bilinear2d
    return lambda x, size, out: kernel(x, size, False, None, None, out=out)


def crop_resize(
    images: Tensor,
    targets: Targets,
    crop: Tensor,
    out_size: tuple[int, int],
    mode: str = "bilinear",
    antialias: bool = True,
    batched: bool | None = None,
) -> tuple[Tensor, Targets]:
    """Crop a box out of every sample and resize it to ``out_size``.

    Two implementations of the same map (``x_in = left + x_out * width / ow``, sampling inside the crop only):

    - per sample with ``F.interpolate`` (the default on the CPU): exactly torchvision's ``resized_crop``,
      antialiasing included; uint8 stays uint8 in PyTorch's vectorised uint8 kernel, which on the CPU is
      about 3 times faster than one batched float ``grid_sample`` for 224-pixel crops (and 20 times faster
      than its antialiased form), see ``docs/benchmarks.md``;
    - batched, one ``grid_sample`` for the whole batch (the default on other devices): bilinear sampling is
      clamped to each crop, so without antialiasing it equals torchvision; with ``antialias=True`` a sample
      shrunk by ``s > 1`` along an axis averages ``ceil(s)`` evenly spaced bilinear samples per output pixel
      along it, a box-filter approximation of torchvision's triangle filter (equal when enlarging).

    Nearest sampling takes the input pixel containing the mapped pixel centre (torchvision's
    ``NEAREST_EXACT``) in both. Boxes and masks are moved by :func:`warp`'s rules.

    Args:
        images: ``(B, C, H, W)``.
        targets: targets of the batch.
        crop: ``(B, 4)`` integer ``(left, top, width, height)`` per sample.
        out_size: ``(oh, ow)``.
        mode: ``"bilinear"`` or ``"nearest"``.
        antialias: filter when shrinking (bilinear only).
        batched: force the batched (True) or per-sample (False) implementation; by device when ``None``.

    Returns:
        ``(images (B, C, oh, ow), targets)``.
    """
    oh, ow = out_size
    crop = crop.to(torch.float64)
    left, top, cw, ch = crop.unbind(1)
    sx, sy = cw / ow, ch / oh
    zeros = torch.zeros_like(sx)
    inverse = torch.stack([torch.stack([sx, zeros, left], 1), torch.stack([zeros, sy, top], 1)], 1)
    clamp = torch.stack([left + 0.5, top + 0.5, left + cw - 0.5, top + ch - 0.5], 1)
    antialias = antialias and mode == "bilinear"
    if images.device.type != "cpu" if batched is None else batched:
        supersample = torch.stack([sx, sy], 1).sub(1e-9).ceil().clamp_min(1).long() if antialias else None
        return warp(images, targets, inverse, out_size, mode, None, clamp, supersample)
    h, w = images.shape[-2:]
    out = images.new_empty((images.shape[0], images.shape[1], oh, ow))
    resize = _resize_kernel(mode, antialias)
    for source, target, (x0, y0, cw_, ch_) in zip(images.split(1), out.split(1), crop.long().tolist()):
        resize(source.narrow(2, y0, ch_).narrow(3, x0, cw_), out_size, out=target)
    if isinstance(targets, list):
        targets = _warp_targets(targets, inverse, out_size, (h, w), clamp)
    return out, targets


class RandomResizedCrop(Transform):
    """Crop a random area and aspect ratio of each sample and resize it to ``size`` (Szegedy et al. 2015).

    Sampling follows torchvision: up to 10 tries of ``area = U(scale) * H * W`` and
    ``aspect = exp(U(log ratio))``, crop ``w = round(sqrt(area * aspect))``, ``h = round(sqrt(area / aspect))``
    at a uniform integer position; if no try fits, a centre crop with the aspect clamped into ``ratio``.

    Args:
        size: output ``(height, width)`` or an int for a square.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).
        interpolation: ``"bilinear"`` (default) or ``"nearest"``.
        antialias: see :func:`crop_resize`.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: object = "bilinear",
        antialias: bool = True,
    ) -> None:
        self.size = as_size(size)
        self.scale = as_range(scale, "scale")
        self.ratio = as_range(ratio, "ratio")
        if self.scale[0] <= 0 or self.ratio[0] <= 0:
            raise ConfigError(f"scale and ratio must be positive, got scale={scale}, ratio={ratio}")
        self.interpolation = interpolation_mode(interpolation)
        self.antialias = bool(antialias)

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b, _, h, w = images.shape
        tries = 10
        area = uniform(*self.scale, (b, tries), generator) * (h * w)
        aspect = torch.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), (b, tries), generator))
        cw = torch.sqrt(area * aspect).round().long()
        ch = torch.sqrt(area / aspect).round().long()
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)
        cw, ch, found = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0], fits.any(1)
        if w / h < self.ratio[0]:
            fw, fh = w, int(round(w / self.ratio[0]))
        elif w / h > self.ratio[1]:
            fw, fh = int(round(h * self.ratio[1])), h
        else:
            fw, fh = w, h
        cw = torch.where(found, cw, torch.full_like(cw, fw))
        ch = torch.where(found, ch, torch.full_like(ch, fh))
        left = torch.where(found, randint_below(w - cw + 1, generator), torch.full_like(cw, (w - fw) // 2))
        top = torch.where(found, randint_below(h - ch + 1, generator), torch.full_like(ch, (h - fh) // 2))
        return {"crop": torch.stack([left, top, cw, ch], 1)}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        return crop_resize(images, targets, params["crop"], self.size, self.interpolation, self.antialias)

    def output_size(self, size: tuple[int, int], params: Params) -> tuple[int, int]:
        return self.size


class Resize(Transform):
    """Resize every sample to ``size`` (deterministic; same arguments as torchvision's ``Resize``).

    Args:
        size: ``(height, width)``, or an int: the shorter side becomes ``size`` and the longer one
            ``int(size * long / short)``.
        interpolation: ``"bilinear"`` (default) or ``"nearest"``.
        max_size: with an int ``size``, the longer side is capped at ``max_size`` (shorter side rescaled).
        antialias: see :func:`crop_resize`.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        interpolation: object = "bilinear",
        max_size: int | None = None,
        antialias: bool = True,
    ) -> None:
        self.size = size if isinstance(size, int) else as_size(size)
        self.interpolation = interpolation_mode(interpolation)
        self.max_size = max_size
        self.antialias = bool(antialias)

    def output_size(self, size: tuple[int, int], params: Params) -> tuple[int, int]:
        if not isinstance(self.size, int):
            return self.size
        h, w = size
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = self.size, int(self.size * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if h <= w else (new_long, new_short)

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        b, _, h, w = images.shape
        crop = torch.tensor([[0, 0, w, h]]).expand(b, 4)
        out_size = self.output_size((h, w), params)
        return crop_resize(images, targets, crop, out_size, self.interpolation, self.antialias)


class HorizontalFlip(Transform):
    """Mirror each sample left-right with probability ``p`` (exact, any dtype).

    A box ``(x1, y1, x2, y2)`` becomes ``(W - x2, y1, W - x1, y2)``.

    Args:
        p: probability that a sample is flipped.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_probability(p)

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        return {"flip": bernoulli(self.p, images.shape[0], generator)}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        flip = params["flip"]
        idx = flip.nonzero()[:, 0].to(images.device)
        images = images.index_copy(0, idx, images.index_select(0, idx).flip(-1))
        if not isinstance(targets, list):
            return images, targets
        w = images.shape[-1]
        out = []
        for do, target in zip(flip.tolist(), targets):
            new = dict(target)
            if do:
                if "boxes" in target:
                    x1, y1, x2, y2 = target["boxes"].unbind(1)
                    new["boxes"] = torch.stack([w - x2, y1, w - x1, y2], 1)
                for key in ("masks", "mask"):
                    if key in target:
                        new[key] = target[key].flip(-1)
            out.append(new)
        return images, out


RandomHorizontalFlip = HorizontalFlip


class RandomRotation(Transform):
    """Rotate each sample by its own angle drawn from ``U(degrees)`` (counter-clockwise, about ``center``).

    The inverse map sends output point ``p`` to ``c + R(-angle) (p - c)``; boxes become the enclosing box of
    their four rotated corners (then clipped and filtered), masks are sampled nearest-neighbour.

    Args:
        degrees: ``d`` for ``[-d, d]`` or a ``(min, max)`` range, in degrees.
        interpolation: ``"nearest"`` (default, as torchvision) or ``"bilinear"``.
        expand: must be False: a batch has one output size, and expanding would give one per angle.
        center: rotation centre ``(x, y)`` in pixels; the image centre ``(W / 2, H / 2)`` when ``None``.
        fill: value(s) for the area rotated in from outside the image (0 when ``None``).
    """

    def __init__(
        self,
        degrees: float | Sequence[float],
        interpolation: object = "nearest",
        expand: bool = False,
        center: Sequence[float] | None = None,
        fill: float | Sequence[float] | None = 0,
    ) -> None:
        if expand:
            raise ConfigError(
                "RandomRotation(expand=True) would give each sample its own size; use expand=False"
            )
        self.degrees = as_range(degrees, "degrees")
        self.interpolation = interpolation_mode(interpolation)
        self.expand = False
        self.center = None if center is None else (float(center[0]), float(center[1]))
        self.fill = fill

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        return {"angle": uniform(*self.degrees, images.shape[0], generator)}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        h, w = images.shape[-2:]
        cx, cy = self.center if self.center is not None else (w / 2.0, h / 2.0)
        inverse = rotation_inverse(params["angle"], cx, cy)
        return warp(images, targets, inverse, (h, w), self.interpolation, self.fill)


def rotation_inverse(angle: Tensor, cx: float, cy: float) -> Tensor:
    """Inverse maps ``(B, 2, 3)`` of counter-clockwise rotations by ``angle`` degrees about ``(cx, cy)``.

    With the y axis pointing down, a counter-clockwise turn maps ``(dx, dy)`` to
    ``(cos a dx + sin a dy, -sin a dx + cos a dy)``; the inverse is the transpose.
    """
    rad = angle.to(torch.float64) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    tx = cx - cos * cx + sin * cy
    ty = cy - sin * cx - cos * cy
    return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
