"""Boxes: format conversion, IoU and its generalizations, IoU losses, NMS, the box coder and the matcher.

Boxes are ``xyxy`` in pixels unless a function says otherwise: ``x1, y1`` the top-left corner and ``x2, y2``
the bottom-right corner in continuous image coordinates, so a box's width is ``x2 - x1`` (no ``+ 1``).
The overlap measures (page: "IoU (Intersection over Union): overlap metric for bounding boxes") come in a
pairwise form, ``(N, 4) x (M, 4) -> (N, M)``, and an elementwise form, ``(N, 4) x (N, 4) -> (N,)``, chosen by
``pairwise=``; pairwise values, NMS and the losses are computed by ``torchvision.ops``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torchvision import ops

from cnnkit.errors import ConfigError

BoxFormat = Literal["xyxy", "xywh", "cxcywh", "xyxyn", "xywhn", "cxcywhn"]
IoUKind = Literal["iou", "giou", "diou", "ciou"]
_FORMATS = ("xyxy", "xywh", "cxcywh", "xyxyn", "xywhn", "cxcywhn")


def box_convert(
    boxes: torch.Tensor, in_fmt: BoxFormat, out_fmt: BoxFormat, image_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Convert boxes between corner, corner-size and centre-size formats, in pixels or normalized.

    Formats: ``xyxy`` (corners ``x1, y1, x2, y2``), ``xywh`` (top-left corner, width, height; COCO's
    ``bbox``), ``cxcywh`` (centre, width, height). A trailing ``n`` (``xyxyn``, ``xywhn``, ``cxcywhn``) means
    the same values divided by the image width (x coordinates and widths) and height (y coordinates and
    heights), so the image spans ``[0, 1]``; ``cxcywhn`` is the YOLO txt format.

    Args:
        boxes: boxes in ``in_fmt``.
        in_fmt: format of ``boxes``.
        out_fmt: format to return.
        image_size: ``(height, width)`` in pixels; required when exactly one of the formats is normalized.

    Returns:
        The boxes in ``out_fmt``, as floats.

    Shape:
        ``(..., 4)`` in and out.
    """
    for fmt in (in_fmt, out_fmt):
        if fmt not in _FORMATS:
            raise ConfigError(f"unknown box format {fmt!r}; expected one of {list(_FORMATS)}")
    in_norm, out_norm = in_fmt.endswith("n"), out_fmt.endswith("n")
    if in_norm != out_norm and image_size is None:
        raise ConfigError(f"converting {in_fmt} to {out_fmt} needs image_size=(height, width)")
    boxes = boxes.float() if not boxes.is_floating_point() else boxes
    if in_norm != out_norm:
        height, width = image_size
        scale = boxes.new_tensor([width, height, width, height])
        boxes = boxes * scale if in_norm else boxes
    shape = boxes.shape
    flat = boxes.reshape(-1, 4)
    flat = ops.box_convert(flat, in_fmt.removesuffix("n"), out_fmt.removesuffix("n"))
    boxes = flat.reshape(shape)
    if in_norm != out_norm and out_norm:
        boxes = boxes / scale
    return boxes


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area ``(x2 - x1) * (y2 - y1)`` of ``xyxy`` boxes (``torchvision.ops.box_area``).

    Shape:
        ``(N, 4)`` -> ``(N,)``.
    """
    return ops.box_area(boxes)


def _check_elementwise(boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    if boxes1.shape != boxes2.shape:
        raise ConfigError(
            f"elementwise IoU needs boxes of equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, *, pairwise: bool = True) -> torch.Tensor:
    """Intersection over union ``IoU = |A n B| / |A u B|`` of ``xyxy`` boxes.

    Args:
        boxes1: boxes ``A``.
        boxes2: boxes ``B``.
        pairwise: every ``A`` against every ``B`` (``torchvision.ops.box_iou``); else ``A[i]`` against ``B[i]``.

    Returns:
        IoU in ``[0, 1]``; ``0/0`` (two empty boxes) gives ``nan`` pairwise and ``0`` elementwise.

    Shape:
        pairwise ``(N, 4), (M, 4) -> (N, M)``; elementwise ``(N, 4), (N, 4) -> (N,)``.
    """
    if pairwise:
        return ops.box_iou(boxes1, boxes2)
    _check_elementwise(boxes1, boxes2)
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, *, pairwise: bool = True) -> torch.Tensor:
    """Generalized IoU ``GIoU = IoU - |C minus (A u B)| / |C|``, ``C`` the smallest box enclosing ``A`` and ``B``.

    Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019. ``GIoU`` is in ``[-1, 1]`` and
    keeps a gradient when the boxes do not overlap.

    Args:
        boxes1: boxes ``A``.
        boxes2: boxes ``B``.
        pairwise: all pairs (``torchvision.ops.generalized_box_iou``); else ``A[i]`` against ``B[i]``
            (``1 - torchvision.ops.generalized_box_iou_loss``, which adds ``eps = 1e-7`` to denominators).

    Shape:
        pairwise ``(N, 4), (M, 4) -> (N, M)``; elementwise ``(N, 4), (N, 4) -> (N,)``.
    """
    if pairwise:
        return ops.generalized_box_iou(boxes1, boxes2)
    return 1 - iou_loss(boxes1, boxes2, kind="giou")


def distance_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, *, pairwise: bool = True) -> torch.Tensor:
    """Distance IoU ``DIoU = IoU - rho^2(b_A, b_B) / c^2``.

    ``rho`` is the distance between the box centres and ``c`` the diagonal of the smallest enclosing box
    (Zheng et al., "Distance-IoU Loss", AAAI 2020). ``DIoU`` is in ``[-1, 1]``.

    Args:
        boxes1: boxes ``A``.
        boxes2: boxes ``B``.
        pairwise: all pairs (``torchvision.ops.distance_box_iou``); else ``A[i]`` against ``B[i]``
            (``1 - torchvision.ops.distance_box_iou_loss``).

    Shape:
        pairwise ``(N, 4), (M, 4) -> (N, M)``; elementwise ``(N, 4), (N, 4) -> (N,)``.
    """
    if pairwise:
        return ops.distance_box_iou(boxes1, boxes2)
    return 1 - iou_loss(boxes1, boxes2, kind="diou")


def complete_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, *, pairwise: bool = True) -> torch.Tensor:
    """Complete IoU ``CIoU = DIoU - alpha * v``, adding the consistency of aspect ratios.

    ``v = 4 / pi^2 * (atan(w_B / h_B) - atan(w_A / h_A))^2`` and ``alpha = v / (1 - IoU + v)`` (Zheng et al.,
    "Distance-IoU Loss", AAAI 2020).

    Args:
        boxes1: boxes ``A``.
        boxes2: boxes ``B``.
        pairwise: all pairs (``torchvision.ops.complete_box_iou``); else ``A[i]`` against ``B[i]``
            (``1 - torchvision.ops.complete_box_iou_loss``).

    Shape:
        pairwise ``(N, 4), (M, 4) -> (N, M)``; elementwise ``(N, 4), (N, 4) -> (N,)``.
    """
    if pairwise:
        return ops.complete_box_iou(boxes1, boxes2)
    return 1 - iou_loss(boxes1, boxes2, kind="ciou")


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: IoUKind = "giou",
    reduction: Literal["none", "mean", "sum"] = "none",
) -> torch.Tensor:
    """Box-regression loss ``1 - IoU`` (or ``1 - GIoU``, ``1 - DIoU``, ``1 - CIoU``) of matched box pairs.

    ``giou``, ``diou`` and ``ciou`` are ``torchvision.ops.generalized_box_iou_loss`` /
    ``distance_box_iou_loss`` / ``complete_box_iou_loss`` (for CIoU, ``alpha`` is held constant in the
    gradient as in the paper). The loss is in ``[0, 1]`` for ``iou`` and ``[0, 2]`` for the others.

    Args:
        pred: predicted ``xyxy`` boxes.
        target: their matched ground-truth boxes.
        kind: which overlap measure.
        reduction: ``"none"`` (per pair), ``"mean"`` or ``"sum"``.

    Shape:
        ``(N, 4), (N, 4) -> (N,)`` for ``"none"``, else a scalar.
    """
    _check_elementwise(pred, target)
    if kind == "iou":
        loss = 1 - box_iou(pred, target, pairwise=False)
        return {"none": loss, "mean": loss.mean() if loss.numel() else loss.sum(), "sum": loss.sum()}[
            reduction
        ]
    losses = {
        "giou": ops.generalized_box_iou_loss,
        "diou": ops.distance_box_iou_loss,
        "ciou": ops.complete_box_iou_loss,
    }
    if kind not in losses:
        raise ConfigError(f"unknown IoU loss kind {kind!r}; expected 'iou', 'giou', 'diou' or 'ciou'")
    return losses[kind](pred, target, reduction=reduction)


def distance_to_box(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """``xyxy`` boxes from points and their distances to the four sides, ``(l, t, r, b)``.

    ``x1 = x - l, y1 = y - t, x2 = x + r, y2 = y + b``: the anchor-free box parametrisation of FCOS (Tian et
    al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019, eq. 1); the inverse of
    :func:`box_to_distance`.

    Shape:
        ``(..., 2), (..., 4) -> (..., 4)`` (broadcast).
    """
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


def box_to_distance(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances ``(l, t, r, b)`` = ``(x - x1, y - y1, x2 - x, y2 - y)`` from points to the sides of ``xyxy``
    boxes (negative for a point outside); the inverse of :func:`distance_to_box`.

    Shape:
        ``(..., 2), (..., 4) -> (..., 4)`` (broadcast).
    """
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression (``torchvision.ops.nms``): remove duplicate detections.

    Visits boxes by decreasing score and drops every box whose IoU with an already kept box is above
    ``iou_threshold``.

    Args:
        boxes: ``xyxy`` boxes.
        scores: their scores.
        iou_threshold: IoU above which the lower-scored box is dropped.

    Returns:
        Indices of the kept boxes, int64, by decreasing score.

    Shape:
        ``(N, 4), (N,) -> (K,)``.
    """
    return ops.nms(boxes, scores, iou_threshold)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware NMS (``torchvision.ops.batched_nms``): boxes of different labels never suppress each other.

    Args:
        boxes: ``xyxy`` boxes.
        scores: their scores.
        labels: class (or image) index of each box.
        iou_threshold: IoU above which the lower-scored box of the same label is dropped.

    Returns:
        Indices of the kept boxes, int64, by decreasing score.

    Shape:
        ``(N, 4), (N,), (N,) -> (K,)``.
    """
    return ops.batched_nms(boxes, scores, labels, iou_threshold)


class BoxCoder:
    """Encode boxes as deltas from reference boxes (anchors, proposals) and decode them back.

    With a reference box of centre ``(x_a, y_a)`` and size ``(w_a, h_a)``, and weights ``(w_x, w_y, w_w, w_h)``
    (R-CNN, Girshick et al. 2014, Appendix C; Faster R-CNN, Ren et al. 2015, eq. 2)::

        dx = w_x (x - x_a) / w_a      dy = w_y (y - y_a) / h_a
        dw = w_w log(w / w_a)         dh = w_h log(h / h_a)

    Decoding inverts this after clamping ``dw / w_w`` and ``dh / h_h`` to ``log(1000 / 16)``, so a box grows
    at most 62.5 times its reference (torchvision's and Detectron's bound against ``exp`` overflow).

    Args:
        weights: ``(w_x, w_y, w_w, w_h)``; ``(10, 10, 5, 5)`` is Faster R-CNN's second stage, ``(1, 1, 1, 1)``
            its RPN.
        clamp: largest decoded ``log`` scale.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        clamp: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clamp = clamp

    def encode(self, boxes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Deltas of ``boxes`` relative to ``reference`` (both ``xyxy``, positive sizes).

        Shape:
            ``(..., 4), (..., 4) -> (..., 4)`` (broadcast).
        """
        wx, wy, ww, wh = self.weights
        ref_w = reference[..., 2] - reference[..., 0]
        ref_h = reference[..., 3] - reference[..., 1]
        ref_x = reference[..., 0] + 0.5 * ref_w
        ref_y = reference[..., 1] + 0.5 * ref_h
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        x = boxes[..., 0] + 0.5 * w
        y = boxes[..., 1] + 0.5 * h
        return torch.stack(
            [
                wx * (x - ref_x) / ref_w,
                wy * (y - ref_y) / ref_h,
                ww * torch.log(w / ref_w),
                wh * torch.log(h / ref_h),
            ],
            dim=-1,
        )

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``xyxy`` boxes from ``deltas`` relative to ``reference``.

        Shape:
            ``(..., 4), (..., 4) -> (..., 4)`` (broadcast).
        """
        wx, wy, ww, wh = self.weights
        reference = reference.to(deltas.dtype)
        ref_w = reference[..., 2] - reference[..., 0]
        ref_h = reference[..., 3] - reference[..., 1]
        ref_x = reference[..., 0] + 0.5 * ref_w
        ref_y = reference[..., 1] + 0.5 * ref_h
        x = deltas[..., 0] / wx * ref_w + ref_x
        y = deltas[..., 1] / wy * ref_h + ref_y
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp)) * ref_w
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp)) * ref_h
        return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)


class Matcher:
    """Assign each prediction (anchor, proposal) the ground-truth box it overlaps most, or a negative code.

    For prediction ``j`` with best quality ``q = max_i Q[i, j]`` (``Q`` an IoU matrix, ground truth x
    predictions): ``q >= high`` gives the index of that ground truth; ``low <= q < high`` gives
    :attr:`BETWEEN_THRESHOLDS` (``-2``, ignored by the loss); ``q < low`` gives :attr:`BELOW_LOW_THRESHOLD`
    (``-1``, background). With ``allow_low_quality_matches`` (Faster R-CNN, Ren et al. 2015, Sec. 3.1.2),
    for each ground truth the predictions of its highest quality (ties included) keep their best ground
    truth even below ``high``, so every object gets at least one prediction; as in torchvision, such a
    prediction keeps its own argmax ground truth. Unlike torchvision, a ground truth whose highest quality
    is 0 (it overlaps no prediction) promotes nothing.

    Args:
        high_threshold: quality from which a prediction is foreground.
        low_threshold: quality below which a prediction is background (``<= high_threshold``).
        allow_low_quality_matches: promote each ground truth's best predictions.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        if low_threshold > high_threshold:
            raise ConfigError(f"low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality: torch.Tensor) -> torch.Tensor:
        """Match predictions to ground truths.

        Args:
            quality: ``Q[i, j]``, e.g. ``box_iou(gt_boxes, anchors)``.

        Returns:
            int64 ground-truth index per prediction, or ``-1`` / ``-2``; all ``-1`` when there is no ground
            truth.

        Shape:
            ``(G, N) -> (N,)``.
        """
        if quality.shape[0] == 0:
            return torch.full(
                (quality.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device
            )
        best, matches = quality.max(dim=0)
        argmax = matches.clone()
        matches[best < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(best >= self.low_threshold) & (best < self.high_threshold)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=1, keepdim=True).values
            promoted = ((quality == best_per_gt) & (best_per_gt > 0)).any(dim=0)
            matches[promoted] = argmax[promoted]
        return matches
