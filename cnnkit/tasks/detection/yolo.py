"""A YOLO-style single-stage detector in the page's form (model ``yolo_grid``): backbone + FPN + a grid head per
pyramid level. cnnkit's ``yolo`` is the anchor-free detector of :mod:`cnnkit.tasks.detection.anchor_free`.

The page: "divide image into S x S grid, predict B bounding boxes and class probabilities per cell. Output
per cell: (x, y, w, h, confidence) * B + class_probs * C". Here each pyramid level ``l`` is a grid of
``H_l x W_l`` cells of ``stride_l`` pixels, and the head's output map has ``B * 5 + C`` channels: channels
``5k .. 5k + 4`` are box ``k``'s raw ``(t_x, t_y, t_w, t_h, t_conf)``, the last ``C`` are the cell's class
logits (shared by its ``B`` boxes, as on the page and in YOLOv1).

Box ``k`` of a cell is relative to a prior box (anchor) from :class:`AnchorGenerator` (``offset=0.5``:
centred in the cell; layout: level, row, column, box), decoded as in YOLOv5 (Jocher et al., 2020)::

    centre = anchor_centre + (2 sigmoid(t_xy) - 1) * stride       (within one cell of the anchor's)
    size   = anchor_size * (2 sigmoid(t_wh))^2                     (0 to 4 times the prior)
    confidence = sigmoid(t_conf),  p(class c) = sigmoid(class logit c)

Steps, each callable and tested alone: ``forward`` (raw maps) -> :meth:`YOLODetector.decode` (boxes,
confidences, class probabilities) -> :meth:`YOLODetector.postprocess` (score threshold, class-aware NMS);
:meth:`YOLODetector.assign_targets` and :meth:`YOLODetector.criterion` for training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.layers import FPN, ConvNormAct
from cnnkit.models.registry import create_model, register_model
from cnnkit.tasks.detection.anchors import AnchorGenerator
from cnnkit.tasks.detection.boxes import batched_nms, box_convert, box_iou, iou_loss

_PRIOR_PROBABILITY = 0.01
"""Initial confidence and class probability (RetinaNet's prior, Lin et al. 2017), so that the many empty
cells start with a small loss."""


@dataclass
class Assignment:
    """Training targets of one image over all boxes ``T`` (every level's ``H * W * B``) and cells ``S``.

    Attributes:
        positive: ``(T,)`` bool, boxes responsible for an object.
        gt_index: ``(T,)`` int64, index of that object in the image's target (``-1`` if none).
        cell_classes: ``(S, C)`` float, 1 for each class with an object assigned to the cell.
        cell_positive: ``(S,)`` bool, cells with at least one responsible box.
    """

    positive: torch.Tensor
    gt_index: torch.Tensor
    cell_classes: torch.Tensor
    cell_positive: torch.Tensor


class YOLODetector(nn.Module):
    """YOLO-style detector over any registered backbone's ``features_only`` maps.

    Args:
        backbone_name: a registered model name, e.g. ``"resnet18"``.
        num_classes: ``C``.
        out_indices: backbone stages fed to the FPN; default its last three.
        fpn_channels: channels of the FPN maps and the head.
        anchor_sizes: per level, the prior sizes (square root of the area); default ``(4 * stride_l,)``.
        aspect_ratios: the prior ratios ``h / w`` (every level); ``B = len(sizes) * len(ratios)`` must be the
            same at every level, as the head is shared.
        size_ratio_limit: a box is responsible for an object only when width and height are each within
            this factor of its prior's (YOLOv5's rule; 4 is all the decoding can reach).
        neighbor_cells: also make the two neighbouring cells nearest the object's centre (one along x, one
            along y) responsible, as YOLOv5 does: three times the positives per object, which the decoding
            can reach (a centre moves up to one stride) and which speeds up training.
        loss_weights: ``(box, confidence, class)`` weights of the loss terms.
        backbone_kwargs: passed to :func:`cnnkit.create_model` (e.g. ``in_chans=1``).

    Shape:
        - Input: ``(N, in_chans, H, W)`` normalized images.
        - Output: list over levels of ``(N, B * 5 + C, H_l, W_l)`` raw maps.
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        out_indices: tuple[int, ...] = (-3, -2, -1),
        fpn_channels: int = 128,
        anchor_sizes: Sequence[Sequence[float]] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        size_ratio_limit: float = 4.0,
        neighbor_cells: bool = True,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        self.backbone = create_model(
            backbone_name, features_only=True, out_indices=out_indices, **backbone_kwargs
        )
        self.strides = self.backbone.feature_info.reduction()
        self.neck = FPN(self.backbone.feature_info.channels(), fpn_channels)
        if anchor_sizes is None:
            anchor_sizes = [(4 * s,) for s in self.strides]
        self.anchors = AnchorGenerator(anchor_sizes, [tuple(aspect_ratios)] * len(self.strides), offset=0.5)
        per_level = self.anchors.num_anchors_per_location()
        if len(set(per_level)) != 1:
            raise ConfigError(f"every level needs the same number of boxes per cell, got {per_level}")
        self.num_boxes = per_level[0]
        self.num_classes = num_classes
        self.size_ratio_limit = size_ratio_limit
        self.neighbor_cells = neighbor_cells
        self.loss_weights = loss_weights
        self.head = nn.Sequential(
            ConvNormAct(fpn_channels, fpn_channels, 3),
            nn.Conv2d(fpn_channels, self.num_boxes * 5 + num_classes, 1),
        )
        prior_logit = -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY)
        with torch.no_grad():
            bias = self.head[-1].bias
            bias.zero_()
            bias[4 : self.num_boxes * 5 : 5] = prior_logit
            bias[self.num_boxes * 5 :] = prior_logit

    def forward(self, images: torch.Tensor, targets: Any = None) -> list[torch.Tensor]:
        """Raw head maps of each pyramid level (see the module docs for the channel layout).

        ``targets`` is accepted and unused, so that one- and two-stage detectors share the training call
        ``model(images, targets)``; the YOLO loss needs them only in :meth:`criterion`."""
        return [self.head(level) for level in self.neck(self.backbone(images))]

    def _flatten(self, outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw box terms ``(N, T, 5)`` in prior order and class logits ``(N, S, C)`` in cell order."""
        boxes, classes = [], []
        for out in outputs:
            n, _, h, w = out.shape
            raw = out.permute(0, 2, 3, 1)
            boxes.append(raw[..., : self.num_boxes * 5].reshape(n, h * w * self.num_boxes, 5))
            classes.append(raw[..., self.num_boxes * 5 :].reshape(n, h * w, self.num_classes))
        return torch.cat(boxes, 1), torch.cat(classes, 1)

    def priors(self, outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prior boxes of the grids that ``outputs`` cover.

        Returns:
            ``priors (T, 4)`` xyxy pixels (level, row, column, box order), ``strides (T,)`` and ``cells (T,)``,
            the index of each prior's cell among all levels' ``S`` cells.
        """
        sizes = [tuple(o.shape[-2:]) for o in outputs]
        per_level = self.anchors(sizes, self.strides, dtype=outputs[0].dtype)
        device = per_level[0].device
        strides = torch.cat(
            [torch.full((len(a),), float(s), device=device) for a, s in zip(per_level, self.strides)]
        )
        cells, offset = [], 0
        for h, w in sizes:
            cells.append(
                torch.arange(offset, offset + h * w, device=device).repeat_interleave(self.num_boxes)
            )
            offset += h * w
        return torch.cat(per_level), strides.to(outputs[0].dtype), torch.cat(cells)

    def _decode_boxes(self, raw: torch.Tensor, priors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
        prior = box_convert(priors, "xyxy", "cxcywh")
        centre = prior[:, :2] + (2 * raw[..., :2].sigmoid() - 1) * strides[:, None]
        size = prior[:, 2:] * (2 * raw[..., 2:4].sigmoid()) ** 2
        return box_convert(torch.cat([centre, size], -1), "cxcywh", "xyxy")

    def decode(self, outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes, confidences and class probabilities of every predicted box.

        Returns:
            ``boxes (N, T, 4)`` xyxy pixels, ``confidence (N, T)``, ``class_probs (N, T, C)`` (its cell's).
        """
        raw, class_logits = self._flatten(outputs)
        priors, strides, cells = self.priors(outputs)
        return (
            self._decode_boxes(raw, priors, strides),
            raw[..., 4].sigmoid(),
            class_logits.sigmoid()[:, cells],
        )

    @torch.no_grad()
    def assign_targets(
        self, outputs: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> list[Assignment]:
        """Choose, for each object, the predicted boxes responsible for it.

        At every level, an object belongs to the cell containing its centre, through each of the cell's boxes
        whose prior is within ``size_ratio_limit`` of the object's width and height; with ``neighbor_cells``
        also to the adjacent cell on the side of the centre's nearer vertical cell edge and the one beyond
        its nearer horizontal edge (inside the grid), through the same boxes (YOLOv5's rule). The box whose
        prior has the highest shape IoU with the object (both centred at one point) over all levels, in the
        centre's own cell, is always responsible. A box claimed by several objects takes the
        always-responsible one first, then an own-cell claim over a neighbour's, then the highest shape
        IoU.

        Args:
            outputs: the raw maps (only their sizes are used).
            targets: per image ``{"boxes": (G, 4) xyxy pixels, "labels": (G,)}``.

        Returns:
            One :class:`Assignment` per image.
        """
        priors, _, cells = self.priors(outputs)
        sizes = [tuple(o.shape[-2:]) for o in outputs]
        num_cells = int(cells[-1]) + 1
        assignments = []
        for target in targets:
            gt = target["boxes"].to(priors).reshape(-1, 4)
            labels = target["labels"].to(priors.device)
            num_gt = len(gt)
            centre = (gt[:, :2] + gt[:, 2:]) / 2
            gt_wh = (gt[:, 2:] - gt[:, :2]).clamp(min=1e-6)
            indices, shape_ious, ranks = [], [], []
            offset = 0
            for (h, w), stride in zip(sizes, self.strides):
                prior_wh = (
                    priors[offset : offset + self.num_boxes, 2:]
                    - priors[offset : offset + self.num_boxes, :2]
                )
                grid_x, grid_y = centre[:, 0] / stride, centre[:, 1] / stride
                x = grid_x.floor().long().clamp(0, w - 1)
                y = grid_y.floor().long().clamp(0, h - 1)
                box = torch.arange(self.num_boxes, device=gt.device)
                inter = torch.minimum(gt_wh[:, None], prior_wh[None]).prod(-1)
                iou = inter / (gt_wh.prod(-1)[:, None] + prior_wh.prod(-1)[None] - inter)
                ratio = gt_wh[:, None] / prior_wh[None]
                fit = torch.maximum(ratio, 1 / ratio).amax(-1) < self.size_ratio_limit
                # the own cell; then (neighbor_cells) the nearer neighbour along x and along y, where inside
                cells_xy = [(x, y, torch.ones_like(x, dtype=torch.bool))]
                if self.neighbor_cells:
                    nx = torch.where(grid_x - x < 0.5, x - 1, x + 1)
                    ny = torch.where(grid_y - y < 0.5, y - 1, y + 1)
                    cells_xy += [(nx, y, (nx >= 0) & (nx < w)), (x, ny, (ny >= 0) & (ny < h))]
                for k, (cx, cy, inside) in enumerate(cells_xy):
                    cell = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1))[:, None]
                    indices.append(offset + cell * self.num_boxes + box)
                    shape_ious.append(iou if k == 0 else iou.new_zeros(iou.shape))  # best prior: own cell
                    # a claim's rank: own cell (0.5, 1], neighbour (0, 0.5], none 0 (no fit, outside)
                    rank = (iou + 1) / 2 if k == 0 else iou / 2
                    ranks.append(torch.where(fit & inside[:, None], rank, torch.zeros_like(iou)))
                offset += h * w * self.num_boxes
            index, shape_iou, score = torch.cat(indices, 1), torch.cat(shape_ious, 1), torch.cat(ranks, 1)
            score[torch.arange(num_gt, device=gt.device), shape_iou.argmax(1)] = 1 + shape_iou.amax(1)
            quality = torch.zeros(len(priors), num_gt + 1, device=priors.device)  # column 0: no object
            objects = torch.arange(1, num_gt + 1, device=gt.device)[:, None].expand_as(index)
            # a box listed twice for one object (a neighbour clamped onto the own cell) keeps its best claim
            flat = (index * (num_gt + 1) + objects).flatten()
            quality.view(-1).scatter_reduce_(0, flat, score.flatten(), reduce="amax")
            best, column = quality.max(1)
            positive = best > 0
            gt_index = column - 1
            cell_classes = torch.zeros(num_cells, self.num_classes, device=priors.device)
            cell_classes[cells[positive], labels[gt_index[positive]]] = 1.0
            cell_positive = torch.zeros(num_cells, dtype=torch.bool, device=priors.device)
            cell_positive[cells[positive]] = True
            assignments.append(Assignment(positive, gt_index, cell_classes, cell_positive))
        return assignments

    def criterion(
        self, outputs: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The YOLO loss: box regression, confidence and classification.

        With ``P`` the responsible boxes (:meth:`assign_targets`) and ``Q`` the cells holding one::

            box        = sum_P (1 - CIoU(pred, object)) / |P|
            confidence = sum_all BCE(t_conf, IoU(pred, object) on P, 0 elsewhere) / |P|
            class      = sum_Q sum_c BCE(class logit c, object classes of the cell) / |Q|
            loss       = w_box * box + w_conf * confidence + w_class * class

        CIoU (Zheng et al., 2020, :func:`iou_loss` with ``kind="ciou"``) as in YOLOv4/v5; the confidence
        target is the detached IoU of the decoded box with its object (YOLOv1's confidence ``Pr(object) *
        IoU``, as YOLOv5 trains it). Normalising by ``|P|`` keeps the loss scale independent of image size.

        Returns:
            ``{"loss": total, "box", "confidence", "class"}`` (the terms detached).
        """
        raw, class_logits = self._flatten(outputs)
        priors, strides, _ = self.priors(outputs)
        boxes = self._decode_boxes(raw, priors, strides)
        assignments = self.assign_targets(outputs, targets)
        zero = raw.sum() * 0
        box_sum, conf_sum, class_sum = zero, zero, zero
        num_boxes, num_cells = 0, 0
        for i, (a, target) in enumerate(zip(assignments, targets)):
            conf_target = torch.zeros_like(raw[i, :, 4])
            if a.positive.any():
                pred = boxes[i, a.positive]
                matched = target["boxes"].to(pred)[a.gt_index[a.positive]]
                box_sum = box_sum + iou_loss(pred, matched, "ciou", reduction="sum")
                conf_target[a.positive] = box_iou(pred.detach(), matched, pairwise=False).clamp(min=0)
                class_sum = class_sum + F.binary_cross_entropy_with_logits(
                    class_logits[i, a.cell_positive], a.cell_classes[a.cell_positive], reduction="sum"
                )
                num_boxes += int(a.positive.sum())
                num_cells += int(a.cell_positive.sum())
            conf_sum = conf_sum + F.binary_cross_entropy_with_logits(
                raw[i, :, 4], conf_target, reduction="sum"
            )
        box = box_sum / max(num_boxes, 1)
        confidence = conf_sum / max(num_boxes, 1)
        classes = class_sum / max(num_cells, 1)
        w_box, w_conf, w_class = self.loss_weights
        loss = w_box * box + w_conf * confidence + w_class * classes
        return {
            "loss": loss,
            "box": box.detach(),
            "confidence": confidence.detach(),
            "class": classes.detach(),
        }

    @torch.no_grad()
    def postprocess(
        self,
        outputs: Sequence[torch.Tensor],
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        pre_nms_top_k: int = 1000,
        image_size: tuple[int, int] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image: class-specific scores, threshold, class-aware NMS.

        The score of box ``k`` for class ``c`` is ``confidence_k * p(c)`` (YOLOv1's class-specific
        confidence). Pairs scoring above ``score_threshold`` (at most ``pre_nms_top_k``, highest first) go
        through :func:`batched_nms`; the best ``max_detections`` are kept.

        Args:
            outputs: the raw maps.
            score_threshold: lowest score kept.
            iou_threshold: NMS IoU threshold, per class.
            max_detections: detections kept per image.
            pre_nms_top_k: candidates entering NMS per image.
            image_size: ``(height, width)`` to clip boxes to; ``None`` leaves them unclipped.

        Returns:
            Per image ``{"boxes": (K, 4) xyxy pixels, "scores": (K,), "labels": (K,) int64}``, by decreasing
            score.
        """
        boxes, confidence, class_probs = self.decode(outputs)
        scores = confidence[..., None] * class_probs
        results = []
        for image_boxes, image_scores in zip(boxes, scores):
            if image_size is not None:
                height, width = image_size
                image_boxes = torch.stack(
                    [
                        image_boxes[:, 0].clamp(0, width),
                        image_boxes[:, 1].clamp(0, height),
                        image_boxes[:, 2].clamp(0, width),
                        image_boxes[:, 3].clamp(0, height),
                    ],
                    dim=1,
                )
            box_index, labels = (image_scores > score_threshold).nonzero(as_tuple=True)
            candidate_scores = image_scores[box_index, labels]
            top = candidate_scores.topk(min(pre_nms_top_k, len(candidate_scores))).indices
            box_index, labels, candidate_scores = box_index[top], labels[top], candidate_scores[top]
            candidates = image_boxes[box_index]
            keep = batched_nms(candidates, candidate_scores, labels, iou_threshold)[:max_detections]
            results.append(
                {"boxes": candidates[keep], "scores": candidate_scores[keep], "labels": labels[keep]}
            )
        return results


@register_model(
    task="detection",
    input_size=(3, 512, 512),
    paper="Redmon et al., 2016, You Only Look Once; Redmon and Farhadi, 2018, YOLOv3 (multi-scale heads)",
)
def yolo_grid(
    num_classes: int = 80, backbone: str = "resnet18", in_chans: int = 3, **kwargs: Any
) -> YOLODetector:
    """The page's per-cell grid YOLO on a registered ``backbone`` (see :class:`YOLODetector`); the anchor-free
    ``yolo`` (:mod:`cnnkit.tasks.detection.anchor_free`) localises far better.

    Args:
        num_classes: object classes.
        backbone: registered classifier whose ``features_only`` maps feed the FPN.
        in_chans: image channels.
        **kwargs: :class:`YOLODetector` options and the backbone's (``weights=``: its classifier weights).
    """
    return YOLODetector(backbone, num_classes, in_chans=in_chans, **kwargs)
