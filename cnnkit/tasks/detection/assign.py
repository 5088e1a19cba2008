"""Task-aligned assignment: which predictions learn which object, chosen by how well they already classify
and localise it (Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021, Sec. 3.2.1).

For object ``g`` of class ``c`` and the prediction at anchor point ``a`` (class probability ``s`` for ``c``,
decoded box ``b``), the alignment metric is::

    t = s^alpha * IoU(b, g)^beta                                                            (TOOD eq. 8)

Only anchor points inside the object's box are candidates; of those, the ``top_k`` of largest ``t`` are its
positives. A point that is a positive of several objects keeps the one its box overlaps most (IoU). The class
target of a positive is IoU-aware and normalised per object (eq. 9's ``t_hat``)::

    t_hat = t * max_{positives of g} IoU / max_{positives of g} t

so the best-aligned prediction of each object is pulled towards that object's best IoU, the others in
proportion; every other class (and every negative point) has target 0. The detector trains its class
logits with BCE towards ``t_hat`` and weights its box losses by it (:mod:`cnnkit.tasks.detection.anchor_free`).

:class:`CentreAssigner` is the static alternative it is ablated against: FCOS's centre sampling, blind to the
predictions, with hard class targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnkit.tasks.detection.boxes import box_iou

_EPS = 1e-9


@dataclass
class AlignedTargets:
    """What a batch's predictions learn (``B`` images, ``A`` anchor points, ``C`` classes).

    Attributes:
        foreground: ``(B, A)`` bool, the positives.
        gt_index: ``(B, A)`` int64, the object of each positive (0 for negatives: read with ``foreground``).
        boxes: ``(B, A, 4)`` ``xyxy`` pixels, the positive's object box (that of object 0 for negatives).
        scores: ``(B, A, C)`` soft class targets ``t_hat`` (0 for negatives and other classes).
    """

    foreground: torch.Tensor
    gt_index: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor

    @classmethod
    def none(cls, b: int, a: int, c: int, like: torch.Tensor) -> AlignedTargets:
        """No positives (a batch without objects), tensors of ``like``'s dtype and device."""
        return cls(
            torch.zeros(b, a, dtype=torch.bool, device=like.device),
            torch.zeros(b, a, dtype=torch.int64, device=like.device),
            like.new_zeros(b, a, 4),
            like.new_zeros(b, a, c),
        )


def points_inside(points: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """Which anchor points lie strictly inside which object boxes (by more than a small epsilon).

    Shape:
        - points: ``(A, 2)`` pixels ``(x, y)``; gt_boxes: ``(B, G, 4)`` xyxy pixels
        - Output: ``(B, G, A)`` bool
    """
    x, y = points[:, 0], points[:, 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
    return torch.minimum(torch.minimum(x - x1, y - y1), torch.minimum(x2 - x, y2 - y)) > _EPS


class TaskAlignedAssigner:
    """TOOD's task-aligned assigner (module docs), batched over images with padded objects.

    Args:
        top_k: positives per object (at most; fewer when fewer anchor points lie inside it).
        alpha: exponent of the class probability in the alignment metric.
        beta: exponent of the IoU.

    The defaults ``top_k=10, alpha=0.5, beta=6`` are those YOLOv6 / YOLOv8 train with; TOOD itself uses
    ``top_k=13, alpha=1, beta=6``.
    """

    def __init__(self, top_k: int = 10, alpha: float = 0.5, beta: float = 6.0) -> None:
        self.top_k = top_k
        self.alpha = alpha
        self.beta = beta

    @torch.no_grad()
    def __call__(
        self,
        scores: torch.Tensor,
        pred_boxes: torch.Tensor,
        points: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_valid: torch.Tensor,
    ) -> AlignedTargets:
        """Assign the objects of each image to anchor points.

        Args:
            scores: class probabilities of the predictions (after the sigmoid).
            pred_boxes: decoded predicted boxes, ``xyxy`` pixels.
            points: the anchor points ``(x, y)`` in pixels.
            gt_labels: object classes, padded.
            gt_boxes: object boxes ``xyxy`` pixels, padded.
            gt_valid: which objects are real (not padding).

        Shape:
            - scores ``(B, A, C)``, pred_boxes ``(B, A, 4)``, points ``(A, 2)``
            - gt_labels ``(B, G)`` int64, gt_boxes ``(B, G, 4)``, gt_valid ``(B, G)`` bool
            - Output: :class:`AlignedTargets` with ``(B, A)`` / ``(B, A, 4)`` / ``(B, A, C)`` tensors.
        """
        b, a, c = scores.shape
        g = gt_boxes.shape[1]
        if g == 0:
            return AlignedTargets.none(b, a, c, scores)
        inside = points_inside(points, gt_boxes) & gt_valid[..., None]
        iou = box_iou(
            gt_boxes[:, :, None].expand(b, g, a, 4).reshape(-1, 4),
            pred_boxes[:, None].expand(b, g, a, 4).reshape(-1, 4),
            pairwise=False,
        ).view(b, g, a)
        class_score = scores.transpose(1, 2).gather(1, gt_labels[..., None].expand(b, g, a))
        align = class_score.pow(self.alpha) * iou.pow(self.beta) * inside
        top = align.topk(min(self.top_k, a), dim=-1).indices
        positive = torch.zeros_like(inside).scatter_(-1, top, True) & inside
        # a point claimed by several objects keeps the one its box overlaps most
        foreground = positive.any(1)
        gt_index = torch.where(positive, iou, torch.full_like(iou, -1.0)).argmax(1)
        positive = F.one_hot(gt_index, g).transpose(1, 2).bool() & positive
        # IoU-aware soft targets, normalised per object
        align = align * positive
        best_align = align.amax(-1, keepdim=True)
        best_iou = (iou * positive).amax(-1, keepdim=True)
        quality = (align * best_iou / (best_align + _EPS)).amax(1)
        labels = gt_labels.gather(1, gt_index)
        target_scores = F.one_hot(labels, c).to(scores.dtype) * (quality * foreground)[..., None]
        boxes = gt_boxes.gather(1, gt_index[..., None].expand(b, a, 4))
        return AlignedTargets(foreground, gt_index, boxes, target_scores)


class CentreAssigner:
    """Static centre sampling (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019,
    Sec. 3.1, with the centre sampling of its later versions), batched over images with padded objects.

    A point of stride ``s`` is a positive of object ``g`` if it lies inside ``g``'s box and within
    ``radius * s`` of the box centre in ``x`` and in ``y``, on every pyramid level (no size range per level:
    the levels' reach is bounded by the detector's regression instead). A point that is a positive of several
    objects keeps the one of smallest area (FCOS). Its class target is hard: 1 for its object's class, 0 for
    every other class and every negative point. Unlike :class:`TaskAlignedAssigner` it never looks at the
    predictions, so which points learn an object is fixed by geometry alone.

    Args:
        radius: half the side of the centre region, in strides (FCOS: 1.5).
    """

    def __init__(self, radius: float = 1.5) -> None:
        self.radius = radius

    @torch.no_grad()
    def __call__(
        self,
        points: torch.Tensor,
        strides: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_valid: torch.Tensor,
        num_classes: int,
    ) -> AlignedTargets:
        """Assign the objects of each image to anchor points.

        Args:
            points: the anchor points ``(x, y)`` in pixels.
            strides: each point's stride in pixels.
            gt_labels: object classes, padded.
            gt_boxes: object boxes ``xyxy`` pixels, padded.
            gt_valid: which objects are real (not padding).
            num_classes: ``C``.

        Shape:
            - points ``(A, 2)``, strides ``(A,)``
            - gt_labels ``(B, G)`` int64, gt_boxes ``(B, G, 4)``, gt_valid ``(B, G)`` bool
            - Output: :class:`AlignedTargets` with ``(B, A)`` / ``(B, A, 4)`` / ``(B, A, C)`` tensors, scores
              0 or 1.
        """
        b, g = gt_labels.shape
        a = len(points)
        if g == 0:
            return AlignedTargets.none(b, a, num_classes, gt_boxes)
        x, y = points[:, 0], points[:, 1]
        x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # (B, G, 1) each
        inside = points_inside(points, gt_boxes)
        reach = self.radius * strides
        near_centre = ((x - (x1 + x2) / 2).abs() < reach) & ((y - (y1 + y2) / 2).abs() < reach)
        positive = inside & near_centre & gt_valid[..., None]  # (B, G, A)
        area = (x2 - x1) * (y2 - y1)
        foreground = positive.any(1)
        gt_index = torch.where(positive, area, torch.full_like(area, float("inf"))).argmin(1)
        labels = gt_labels.gather(1, gt_index)
        scores = F.one_hot(labels, num_classes).to(gt_boxes.dtype) * foreground[..., None]
        boxes = gt_boxes.gather(1, gt_index[..., None].expand(b, a, 4))
        return AlignedTargets(foreground, gt_index, boxes, scores)
