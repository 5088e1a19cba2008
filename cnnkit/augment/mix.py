"""Mix pairs of samples: MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019), with soft labels.

Each sample ``i`` is paired with sample ``partner[i]`` of a random permutation of the batch and draws its own
``lambda ~ Beta(alpha, alpha)``. Classification labels (``(B,)`` indices with ``num_classes``, or ``(B, K)``
soft labels) become ``y_i' = w_i y_i + (1 - w_i) y_partner`` with ``w`` the weight of the sample's own image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnnkit.augment.base import (
    Params,
    Targets,
    Transform,
    filter_boxes,
    restore_dtype,
    sample_beta,
    soft_labels,
)
from cnnkit.errors import DataError


def _mix_labels(labels: Tensor, partner: Tensor, weight: Tensor, num_classes: int | None) -> Tensor:
    soft = soft_labels(labels, num_classes)
    w = weight.to(device=soft.device, dtype=soft.dtype).view(-1, 1)
    return w * soft + (1 - w) * soft[partner.to(soft.device)]


class MixUp(Transform):
    """Blend each sample with a partner: ``x' = lambda x_i + (1 - lambda) x_j`` (Zhang et al. 2018, "mixup").

    Detection targets: the mixed image shows both samples' objects, so the target holds both samples'
    boxes, labels and instance masks, concatenated (own first). A semantic ``mask`` cannot be blended and
    raises :class:`DataError`.

    Args:
        alpha: ``lambda ~ Beta(alpha, alpha)``.
        num_classes: needed when labels are class indices.
    """

    def __init__(self, alpha: float = 1.0, num_classes: int | None = None) -> None:
        self.alpha = float(alpha)
        self.num_classes = num_classes

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b = images.shape[0]
        return {
            "partner": torch.randperm(b, generator=generator),
            "lam": sample_beta(self.alpha, b, generator),
        }

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        partner, lam = params["partner"], params["lam"]
        idx = partner.to(images.device)
        w = lam.to(device=images.device, dtype=torch.float32).view(-1, 1, 1, 1)
        x = images.float() if images.dtype == torch.uint8 else images
        out = restore_dtype(x * w + x[idx] * (1 - w), images.dtype)
        if isinstance(targets, Tensor):
            return out, _mix_labels(targets, partner, lam, self.num_classes)
        if targets is None:
            return out, None
        mixed = []
        for target, j in zip(targets, partner.tolist()):
            if "mask" in target:
                raise DataError("MixUp cannot blend semantic masks; use CutMix for segmentation")
            other = targets[j]
            new = dict(target)
            for key in ("boxes", "labels", "masks", "iscrowd"):
                if key in target and key in other:
                    new[key] = torch.cat([target[key], other[key]])
            mixed.append(new)
        return out, mixed


class CutMix(Transform):
    """Paste a rectangle of a partner sample into each sample (Yun et al. 2019, "CutMix").

    The rectangle has sides ``W sqrt(1 - lambda)`` and ``H sqrt(1 - lambda)`` around a uniform random centre
    and is clipped to the image, so the label weight of the sample's own image is recomputed from what was
    actually pasted: ``w = 1 - (x2 - x1)(y2 - y1) / (H W)``.

    Detection/segmentation targets: the partner's boxes are cut to the rectangle (and kept if at least one
    pixel wide and tall), own boxes lying wholly inside the rectangle are dropped (others are kept as they
    are), instance masks are cut the same way, and a semantic ``mask`` takes the partner's values inside it.

    Args:
        alpha: ``lambda ~ Beta(alpha, alpha)``.
        num_classes: needed when labels are class indices.
    """

    def __init__(self, alpha: float = 1.0, num_classes: int | None = None) -> None:
        self.alpha = float(alpha)
        self.num_classes = num_classes

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        b, _, h, w = images.shape
        lam = sample_beta(self.alpha, b, generator)
        cut = torch.sqrt(1.0 - lam)
        half_w, half_h = (cut * w / 2).long(), (cut * h / 2).long()
        cx = (torch.rand(b, generator=generator, dtype=torch.float64) * w).long()
        cy = (torch.rand(b, generator=generator, dtype=torch.float64) * h).long()
        rects = torch.stack(
            [
                (cx - half_w).clamp(0, w),
                (cy - half_h).clamp(0, h),
                (cx + half_w).clamp(0, w),
                (cy + half_h).clamp(0, h),
            ],
            1,
        )
        return {"partner": torch.randperm(b, generator=generator), "lam": lam, "rects": rects}

    @staticmethod
    def own_weight(rects: Tensor, size: tuple[int, int]) -> Tensor:
        """``1 - pasted area / image area`` per sample (float64)."""
        area = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
        return 1.0 - area.to(torch.float64) / (size[0] * size[1])

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        partner, rects = params["partner"], params["rects"]
        b, _, h, w = images.shape
        r = rects.to(images.device)
        xs = torch.arange(w, device=images.device).view(1, w)
        ys = torch.arange(h, device=images.device).view(h, 1)
        inside = (
            (xs >= r[:, 0].view(-1, 1, 1))
            & (xs < r[:, 2].view(-1, 1, 1))
            & (ys >= r[:, 1].view(-1, 1, 1))
            & (ys < r[:, 3].view(-1, 1, 1))
        )
        idx = partner.to(images.device)
        out = torch.where(inside.unsqueeze(1), images[idx], images)
        if isinstance(targets, Tensor):
            return out, _mix_labels(targets, partner, self.own_weight(rects, (h, w)), self.num_classes)
        if targets is None:
            return out, None
        return out, [
            self._cut_target(targets[i], targets[j], rects[i], inside[i], (h, w))
            for i, j in enumerate(partner.tolist())
        ]

    @staticmethod
    def _cut_target(own: dict, other: dict, rect: Tensor, inside: Tensor, size: tuple[int, int]) -> dict:
        new = dict(own)
        if "mask" in own:
            new["mask"] = torch.where(inside.to(own["mask"].device), other["mask"], own["mask"])
        if "boxes" not in own:
            return new
        x1, y1, x2, y2 = (float(v) for v in rect.tolist())
        boxes = own["boxes"]
        covered = (boxes[:, 0] >= x1) & (boxes[:, 1] >= y1) & (boxes[:, 2] <= x2) & (boxes[:, 3] <= y2)
        keep = ~covered if x2 > x1 and y2 > y1 else torch.ones_like(covered)
        cut = other["boxes"].clone()
        cut[:, 0::2] = cut[:, 0::2].clamp(x1, x2)
        cut[:, 1::2] = cut[:, 1::2].clamp(y1, y2)
        pasted = {"labels": other["labels"]} if "labels" in other else {}
        if "masks" in other:
            pasted["masks"] = other["masks"] * inside.to(other["masks"].device)
        pasted = filter_boxes(pasted, cut, size, pasted.get("masks"))
        new["boxes"] = torch.cat([boxes[keep], pasted["boxes"].to(boxes.dtype)])
        if "labels" in own and "labels" in pasted:
            new["labels"] = torch.cat([own["labels"][keep], pasted["labels"]])
        if "masks" in own and "masks" in pasted:
            own_masks = own["masks"][keep.to(own["masks"].device)] * ~inside.to(own["masks"].device)
            new["masks"] = torch.cat([own_masks, pasted["masks"]])
        return new
