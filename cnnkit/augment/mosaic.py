"""Mosaic: four images around a random centre in one (Bochkovskiy et al., "YOLOv4: Optimal Speed and Accuracy of
Object Detection", 2020, Sec. 3.3).

Each chosen sample ``i`` of a ``(B, C, H, W)`` batch draws a centre ``(x_c, y_c)`` and four different images of
the batch ``q_0 .. q_3`` (with repetition in a batch of fewer than four); the output, of the same ``H x W``, shows the bottom-right corner of ``q_0`` above-left of the
centre, the bottom-left of ``q_1`` above-right, the top-right of ``q_2`` below-left and the top-left of ``q_3``
below-right. That is YOLOv4's mosaic of four images on a ``2H x 2W`` canvas meeting at the centre, cropped
back to ``H x W`` around it, so objects keep their size in pixels (scale them with :class:`RandomAffine`
after). A network sees four contexts and four times the objects' variety per image, and batch statistics
over more images.

Image ``q`` lands shifted by ``(dx, dy)`` = ``(x_c - W, y_c - H)``, ``(x_c, y_c - H)``, ``(x_c - W, y_c)``,
``(x_c, y_c)`` for ``q = 0 .. 3`` and is cut to its quadrant; its boxes move by the same shift and are clipped
to the quadrant, and a box keeps its object only while at least ``min_visible`` of its area remains (and it is
at least ``MIN_BOX_SIZE`` wide and tall): a sliver of a digit is not that digit. Instance masks and semantic
masks are cut like the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cnnkit.augment.base import (
    MIN_BOX_SIZE,
    Params,
    Targets,
    Transform,
    bernoulli,
    check_probability,
    randint_below,
    soft_labels,
    uniform,
)
from cnnkit.errors import ConfigError


class Mosaic(Transform):
    """Four images of the batch around a random centre, per sample (module docs).

    Args:
        p: probability that a sample becomes a mosaic (else it is left as it is).
        center: ``(low, high)`` fractions of the width and height between which the centre is drawn.
        min_visible: fraction of a box's area that must stay inside its quadrant for the object to be kept.
        num_classes: needed for class-index labels, which become soft labels weighted by each quadrant's area
            (as :class:`CutMix` weighs what it pasted).

    Shape:
        ``(B, C, H, W)`` in and out; targets: ``B`` dicts with ``boxes (N, 4)``, ``labels (N,)`` and optionally
        ``masks (N, H, W)`` or ``mask (H, W)``; or labels ``(B,)`` / ``(B, K)``, returned as ``(B, K)``.
    """

    def __init__(
        self,
        p: float = 1.0,
        center: Sequence[float] = (0.25, 0.75),
        min_visible: float = 0.25,
        num_classes: int | None = None,
    ) -> None:
        self.p = check_probability(p)
        low, high = (float(c) for c in center)
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(
                f"center must be (low, high) fractions with 0 <= low <= high <= 1, got {center}"
            )
        self.center = (low, high)
        self.min_visible = check_probability(min_visible)
        self.num_classes = num_classes

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b, _, h, w = images.shape
        low, high = self.center
        return {
            "apply": bernoulli(self.p, b, generator),
            "sources": _sources(b, generator),
            "centre": torch.stack(
                [
                    (uniform(low, high, b, generator) * w).round().long(),
                    (uniform(low, high, b, generator) * h).round().long(),
                ],
                1,
            ),
        }

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        out = images.clone()
        h, w = images.shape[-2:]
        labels = isinstance(targets, Tensor)
        if labels:
            soft = soft_labels(targets, self.num_classes)
            new_targets = soft.clone()
        else:
            new_targets = list(targets) if targets is not None else None
        for i in params["apply"].nonzero()[:, 0].tolist():
            xc, yc = params["centre"][i].tolist()
            pieces = []
            for q, source in enumerate(params["sources"][i].tolist()):
                dx = xc - w if q in (0, 2) else xc
                dy = yc - h if q in (0, 1) else yc
                region = (
                    max(dx, 0),
                    max(dy, 0),
                    min(dx + w, w),
                    min(dy + h, h),
                )  # x0, y0, x1, y1 in the output
                x0, y0, x1, y1 = region
                out[i, :, y0:y1, x0:x1] = images[source, :, y0 - dy : y1 - dy, x0 - dx : x1 - dx]
                if labels:
                    pieces.append(soft[source] * ((x1 - x0) * (y1 - y0) / (h * w)))
                elif targets is not None:
                    pieces.append(_moved_target(targets[source], dx, dy, region, (h, w), self.min_visible))
            if labels:
                new_targets[i] = sum(pieces)
            elif new_targets is not None:
                new_targets[i] = _joined(targets[i], pieces)
        return out, new_targets


def _sources(b: int, generator: torch.Generator | None) -> Tensor:
    """``(B, 4)`` images of the batch for each sample's quadrants: four different ones when the batch has
    four, else drawn with repetition."""
    if b >= 4:
        return torch.rand(b, b, generator=generator, dtype=torch.float64).argsort(1)[:, :4]
    return randint_below(torch.full((b, 4), b, dtype=torch.int64), generator)


def _moved_target(
    target: dict[str, Tensor],
    dx: int,
    dy: int,
    region: tuple[int, int, int, int],
    size: tuple[int, int],
    min_visible: float,
) -> dict[str, Tensor]:
    """One quadrant's part of a target: boxes shifted and clipped to ``region`` (objects mostly outside
    dropped), masks shifted and cut to it."""
    x0, y0, x1, y1 = region
    h, w = size
    part: dict[str, Tensor] = {}
    if "mask" in target:
        mask = torch.zeros_like(target["mask"])
        mask[y0:y1, x0:x1] = target["mask"][y0 - dy : y1 - dy, x0 - dx : x1 - dx]
        part["mask"] = mask
    if "boxes" not in target:
        return part
    boxes = target["boxes"] + target["boxes"].new_tensor([dx, dy, dx, dy])
    clipped = torch.stack(
        [
            boxes[:, 0].clamp(x0, x1),
            boxes[:, 1].clamp(y0, y1),
            boxes[:, 2].clamp(x0, x1),
            boxes[:, 3].clamp(y0, y1),
        ],
        1,
    )
    wh = clipped[:, 2:] - clipped[:, :2]
    area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    keep = (wh >= MIN_BOX_SIZE).all(1) & (wh.prod(1) >= min_visible * area)
    part["boxes"] = clipped[keep]
    for key in ("labels", "iscrowd"):
        if key in target:
            part[key] = target[key][keep.to(target[key].device)]
    if "masks" in target:
        kept = target["masks"][keep.to(target["masks"].device)]
        masks = kept.new_zeros(len(kept), h, w)
        masks[:, y0:y1, x0:x1] = kept[:, y0 - dy : y1 - dy, x0 - dx : x1 - dx]
        part["masks"] = masks
    return part


def _joined(own: dict[str, Tensor], pieces: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mosaic's target: the quadrants' objects concatenated (semantic masks summed: they do not
    overlap), other keys of the sample's own target kept."""
    new = dict(own)
    for key in ("boxes", "labels", "iscrowd", "masks"):
        if key in own:
            new[key] = torch.cat([piece[key] for piece in pieces])
    if "mask" in own:
        new["mask"] = sum(piece["mask"] for piece in pieces)
    return new
