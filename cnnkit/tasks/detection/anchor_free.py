"""An anchor-free single-stage detector of the current YOLO generation: decoupled heads, boxes as
distributions, task-aligned assignment.

Built from the papers, in our own code:

- **anchor-free points** (FCOS, Tian et al. 2019): every cell of every pyramid level is a point
  ``((x + 0.5) s, (y + 0.5) s)`` (:func:`~cnnkit.tasks.detection.anchors.anchor_points`) that predicts the
  distances ``(l, t, r, b)`` from itself to the four sides of a box, and a probability per class;
- **decoupled head per level** (YOLOX, Ge et al. 2021): a box branch and a class branch, each two 3x3
  conv-BN-SiLU layers and a 1x1 output conv, separate weights on each level;
- **distances as distributions** (Generalized Focal Loss, Li et al. 2020): each distance is ``reg_max``
  logits over ``0 .. reg_max - 1`` strides; the box uses their expectation (:mod:`~cnnkit.tasks.detection
  .losses`), ``box = distance_to_box(point, E[distance] * stride)``;
- **task-aligned assignment** (TOOD, Feng et al. 2021): :class:`~cnnkit.tasks.detection.assign
  .TaskAlignedAssigner`, with IoU-aware soft class targets trained by BCE;
- **losses**: BCE of the class logits towards the soft targets, CIoU (Zheng et al. 2020) of the decoded
  boxes and DFL of the distributions, the box terms weighted by each positive's soft target; all three are
  normalised by the sum of the soft targets;
- **neck**: an FPN, or a PAN (top-down then bottom-up, Liu et al. 2018; ``neck="pan"``).

Each component can be swapped for the simpler standard one it improved on, to measure what it brings (the
ablation table of ``docs/detection.md``); the defaults are the full detector:

- ``assigner="centre"``: FCOS's static centre sampling with hard class targets
  (:class:`~cnnkit.tasks.detection.assign.CentreAssigner`) instead of task-aligned assignment;
- ``dfl=False``: each side's distance regressed directly, ``softplus(raw) * stride`` (one output per side),
  with no DFL term, instead of a distribution;
- ``box_loss="iou"`` (or ``"giou"``, ``"diou"``): that overlap loss instead of CIoU;
- ``neck="fpn"``: no bottom-up path.

The raw output of level ``l`` is one map ``(N, 4 * B + C, H_l, W_l)`` with ``B = reg_max`` (``B = 1`` with
``dfl=False``): channels ``0 .. 4 B - 1`` are the box outputs of ``l, t, r, b`` (``B`` each, in that order),
the last ``C`` the class logits.
Decoding and post-processing are methods, outside ``forward``, so the model exports to ONNX and traces
with ``torch.fx`` as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.layers import FPN, PAN, ConvNormAct
from cnnkit.models.registry import create_model, register_model
from cnnkit.tasks.detection.anchors import anchor_points
from cnnkit.tasks.detection.assign import AlignedTargets, CentreAssigner, TaskAlignedAssigner
from cnnkit.tasks.detection.boxes import IoUKind, batched_nms, box_to_distance, distance_to_box, iou_loss
from cnnkit.tasks.detection.losses import distribution_expectation, distribution_focal_loss

_PRIOR_PROBABILITY = 0.01
"""Initial class probability (RetinaNet's prior, Lin et al. 2017): the many background points start with a
small loss."""


def _branch(in_channels: int, channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv-BN-SiLU layers and a 1x1 output conv."""
    return nn.Sequential(
        ConvNormAct(in_channels, channels, 3, act_layer=nn.SiLU),
        ConvNormAct(channels, channels, 3, act_layer=nn.SiLU),
        nn.Conv2d(channels, out_channels, 1),
    )


class AnchorFreeYOLO(nn.Module):
    """Anchor-free detector with distribution boxes and task-aligned assignment (module docs), over any
    registered backbone's ``features_only`` maps.

    Args:
        backbone_name: a registered model name, e.g. ``"mobilenet_v3_large"``.
        num_classes: ``C``.
        out_indices: backbone stages fed to the neck; default its last three.
        neck: ``"pan"`` (top-down and bottom-up paths) or ``"fpn"`` (top-down only).
        neck_channels: channels of the neck's maps.
        head_channels: channels of the box and class branches; default ``neck_channels``.
        reg_max: values ``0 .. reg_max - 1`` (in strides) of each side's distance distribution; a side
            reaches at most ``(reg_max - 1) * stride`` pixels from its point. With ``dfl=False`` only the
            starting distance, ``(reg_max - 1) / 2`` strides as the flat distributions'.
        assigner: ``"tal"`` (task-aligned, :class:`TaskAlignedAssigner`) or ``"centre"`` (FCOS's static
            centre sampling, radius 1.5 strides, hard class targets: :class:`CentreAssigner`).
        dfl: boxes as distributions trained with DFL; ``False``: one distance per side,
            ``softplus(raw) * stride``, and no DFL term.
        box_loss: the box loss ``1 - overlap``: ``"ciou"``, ``"diou"``, ``"giou"`` or ``"iou"``
            (:func:`~cnnkit.tasks.detection.boxes.iou_loss`).
        top_k / alpha / beta: the task-aligned assigner's (:class:`TaskAlignedAssigner`).
        loss_weights: ``(box, class, dfl)`` weights: box loss, BCE and DFL (YOLOv8's gains 7.5, 0.5, 1.5).
        backbone_kwargs: passed to :func:`cnnkit.create_model` (e.g. ``in_chans=1``).

    Shape:
        - Input: ``(N, in_chans, H, W)`` normalised images.
        - Output: list over levels of ``(N, 4 * B + C, H_l, W_l)`` raw maps, ``B = reg_max`` with DFL, else 1.
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        out_indices: tuple[int, ...] = (-3, -2, -1),
        neck: Literal["pan", "fpn"] = "pan",
        neck_channels: int = 64,
        head_channels: int | None = None,
        reg_max: int = 16,
        assigner: Literal["tal", "centre"] = "tal",
        dfl: bool = True,
        box_loss: IoUKind = "ciou",
        top_k: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        loss_weights: tuple[float, float, float] = (7.5, 0.5, 1.5),
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if neck not in ("pan", "fpn"):
            raise ConfigError(f"neck must be 'pan' or 'fpn', got {neck!r}")
        if reg_max < 2:
            raise ConfigError(f"reg_max must be >= 2 (values 0 .. reg_max - 1), got {reg_max}")
        if assigner not in ("tal", "centre"):
            raise ConfigError(f"assigner must be 'tal' or 'centre', got {assigner!r}")
        if box_loss not in ("iou", "giou", "diou", "ciou"):
            raise ConfigError(f"box_loss must be 'iou', 'giou', 'diou' or 'ciou', got {box_loss!r}")
        self.backbone = create_model(
            backbone_name, features_only=True, out_indices=out_indices, **backbone_kwargs
        )
        self.strides = self.backbone.feature_info.reduction()
        channels = self.backbone.feature_info.channels()
        self.neck = PAN(channels, neck_channels) if neck == "pan" else FPN(channels, neck_channels)
        head_channels = head_channels or neck_channels
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.dfl = dfl
        self.box_loss = box_loss
        self.box_heads = nn.ModuleList(
            _branch(neck_channels, head_channels, 4 * reg_max if dfl else 4) for _ in self.strides
        )
        self.class_heads = nn.ModuleList(
            _branch(neck_channels, head_channels, num_classes) for _ in self.strides
        )
        self.assigner = TaskAlignedAssigner(top_k, alpha, beta) if assigner == "tal" else CentreAssigner()
        self.loss_weights = tuple(loss_weights)
        prior_logit = -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY)
        # every side starts at (reg_max - 1) / 2 strides: flat distributions, or softplus(bias) of that value
        start = (reg_max - 1) / 2
        box_bias = 1.0 if dfl else start + math.log(-math.expm1(-start))
        with torch.no_grad():
            for head in self.class_heads:
                head[-1].bias.fill_(prior_logit)
            for head in self.box_heads:
                head[-1].bias.fill_(box_bias)

    def forward(self, images: torch.Tensor, targets: Any = None) -> list[torch.Tensor]:
        """Raw maps of each pyramid level (channel layout in the module docs).

        ``targets`` is accepted and unused, so that one- and two-stage detectors share the training call
        ``model(images, targets)``."""
        levels = self.neck(self.backbone(images))
        return [
            torch.cat([box(level), cls(level)], 1)
            for level, box, cls in zip(levels, self.box_heads, self.class_heads)
        ]

    # -- decoding ------------------------------------------------------------------------------------------
    def _flatten(self, outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Box outputs ``(N, A, 4, B)`` (``B = reg_max`` distance logits, or 1 raw distance without DFL) and
        class logits ``(N, A, C)``, points level by level."""
        flat = torch.cat([o.flatten(2) for o in outputs], 2).transpose(1, 2)
        n, a, _ = flat.shape
        box_channels = flat.shape[-1] - self.num_classes
        return flat[..., :box_channels].reshape(n, a, 4, -1), flat[..., box_channels:]

    def points(self, outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor points ``(A, 2)`` pixels and their strides ``(A,)`` of the maps ``outputs``.

        Kept per map sizes, dtype and device (and inference mode, whose tensors autograd refuses), so that a
        stream of same-size images builds them once: at batch 1 the ~20 small operators cost about 3% of
        a MobileNetV3-Small detector's prediction."""
        sizes = tuple(tuple(o.shape[-2:]) for o in outputs)
        key = (sizes, outputs[0].dtype, outputs[0].device, torch.is_inference_mode_enabled())
        cache = self.__dict__.setdefault("_point_cache", {})
        if key not in cache:
            if len(cache) >= 8:  # a few sizes at most in practice; never grow without bound
                cache.clear()
            cache[key] = anchor_points(sizes, self.strides, dtype=outputs[0].dtype, device=outputs[0].device)
        return cache[key]

    def _boxes(self, distances: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
        """``xyxy`` boxes ``(N, A, 4)`` of the box outputs ``(N, A, 4, B)`` (:meth:`_flatten`)."""
        if self.dfl:
            sides = distribution_expectation(distances)
        else:
            sides = F.softplus(distances[..., 0])
        return distance_to_box(points, sides * strides[:, None])

    def decode(self, outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes and class probabilities of every anchor point.

        ``box = (x - l s, y - t s, x + r s, y + b s)`` with each side's ``E[distance]`` (GFL eq. 5), or
        ``softplus(raw)`` without DFL, in strides ``s``; ``p(class c) = sigmoid(logit c)``.

        Returns:
            ``boxes (N, A, 4)`` xyxy pixels and ``class_probs (N, A, C)``.
        """
        distances, class_logits = self._flatten(outputs)
        points, strides = self.points(outputs)
        return self._boxes(distances, points, strides), class_logits.sigmoid()

    # -- training ------------------------------------------------------------------------------------------
    def criterion(
        self, outputs: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The loss: class BCE towards the assigner's class targets, box loss (CIoU) and DFL of the positives.

        With ``t_hat`` the assigner's class targets (``(N, A, C)``; task-aligned soft targets, or 0 / 1 with
        ``assigner="centre"``), ``w_a = sum_c t_hat[a, c]`` the weight of positive ``a``, and
        ``T = max(sum t_hat, 1)``::

            class = sum_{a, c} BCE(logit[a, c], t_hat[a, c]) / T
            box   = sum_{a in P} w_a (1 - CIoU(box_a, object_a)) / T
            dfl   = sum_{a in P} w_a mean_{side} DFL(side distribution, side distance / stride) / T
            loss  = w_box box + w_class class + w_dfl dfl

        as in TOOD (Feng et al. 2021) with GFL's DFL (Li et al. 2020); ``box_loss`` picks the overlap in
        ``box``, and with ``dfl=False`` there is no ``dfl`` term.

        Args:
            outputs: the raw maps.
            targets: per image ``{"boxes": (G, 4) xyxy pixels, "labels": (G,)}``.

        Returns:
            ``{"loss": total, "box", "class", "dfl"}`` (the terms detached; no ``"dfl"`` with ``dfl=False``).
        """
        distances, class_logits = self._flatten(outputs)
        points, strides = self.points(outputs)
        boxes = self._boxes(distances, points, strides)
        assigned = self._assign(class_logits, boxes, points, strides, targets)
        total = assigned.scores.sum().clamp(min=1)
        classes = F.binary_cross_entropy_with_logits(class_logits, assigned.scores, reduction="sum") / total
        fg = assigned.foreground
        box = dfl = boxes.sum() * 0
        if fg.any():
            weight = assigned.scores.sum(-1)[fg]
            target_boxes = assigned.boxes[fg]
            box = (iou_loss(boxes[fg], target_boxes, self.box_loss) * weight).sum() / total
            if self.dfl:
                point_index = fg.nonzero()[:, 1]
                sides = box_to_distance(points[point_index], target_boxes) / strides[point_index, None]
                dfl = (distribution_focal_loss(distances[fg], sides).mean(-1) * weight).sum() / total
        w_box, w_class, w_dfl = self.loss_weights
        loss = w_box * box + w_class * classes + w_dfl * dfl
        terms = {"box": box, "class": classes, "dfl": dfl} if self.dfl else {"box": box, "class": classes}
        return {"loss": loss, **{name: term.detach() for name, term in terms.items()}}

    def _assign(
        self,
        class_logits: torch.Tensor,
        boxes: torch.Tensor,
        points: torch.Tensor,
        strides: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> AlignedTargets:
        """The positives and class targets of a batch: task-aligned from the (detached) predictions, or
        static from the points' geometry alone."""
        gt_boxes, gt_labels, gt_valid = _pad_targets(targets, boxes)
        if isinstance(self.assigner, TaskAlignedAssigner):
            return self.assigner(
                class_logits.detach().sigmoid(), boxes.detach(), points, gt_labels, gt_boxes, gt_valid
            )
        return self.assigner(points, strides, gt_labels, gt_boxes, gt_valid, self.num_classes)

    # -- inference -----------------------------------------------------------------------------------------
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
        """Detections per image: every (point, class) scoring above ``score_threshold`` (at most
        ``pre_nms_top_k``, highest first), class-aware NMS (:func:`batched_nms`), the best
        ``max_detections``.

        Args:
            outputs: the raw maps.
            score_threshold: lowest class probability kept.
            iou_threshold: NMS IoU threshold, per class.
            max_detections: detections kept per image.
            pre_nms_top_k: candidates entering NMS per image.
            image_size: ``(height, width)`` to clip boxes to; ``None`` leaves them unclipped.

        Returns:
            Per image ``{"boxes": (K, 4) xyxy pixels, "scores": (K,), "labels": (K,) int64}``, by decreasing
            score.
        """
        boxes, scores = self.decode(outputs)
        if image_size is not None:
            height, width = image_size
            limit = boxes.new_tensor([width, height, width, height])
            boxes = torch.minimum(boxes.clamp(min=0), limit)
        results = []
        for image_boxes, image_scores in zip(boxes, scores):
            flat = image_scores.flatten()
            candidates = (flat > score_threshold).nonzero()[:, 0]
            top = flat[candidates].topk(min(pre_nms_top_k, len(candidates))).indices
            candidates = candidates[top]
            point, labels = candidates // self.num_classes, candidates % self.num_classes
            kept_boxes, kept_scores = image_boxes[point], flat[candidates]
            keep = batched_nms(kept_boxes, kept_scores, labels, iou_threshold)[:max_detections]
            results.append({"boxes": kept_boxes[keep], "scores": kept_scores[keep], "labels": labels[keep]})
        return results


def _pad_targets(
    targets: Sequence[dict[str, torch.Tensor]], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objects of a batch padded to its largest count: ``boxes (B, G, 4)``, ``labels (B, G)``, ``valid (B, G)``."""
    count = max((len(t["labels"]) for t in targets), default=0)
    boxes = like.new_zeros(len(targets), count, 4)
    labels = torch.zeros(len(targets), count, dtype=torch.int64, device=like.device)
    valid = torch.zeros(len(targets), count, dtype=torch.bool, device=like.device)
    for i, target in enumerate(targets):
        n = len(target["labels"])
        boxes[i, :n] = target["boxes"].to(like).reshape(-1, 4)
        labels[i, :n] = target["labels"].to(like.device)
        valid[i, :n] = True
    return boxes, labels, valid


@register_model(
    task="detection",
    input_size=(3, 512, 512),
    paper=(
        "Tian et al., 2019, FCOS; Li et al., 2020, Generalized Focal Loss; Feng et al., 2021, TOOD; "
        "Liu et al., 2018, PANet"
    ),
)
def yolo(
    num_classes: int = 80, backbone: str = "resnet18", in_chans: int = 3, **kwargs: Any
) -> AnchorFreeYOLO:
    """The anchor-free YOLO on a registered ``backbone`` (see :class:`AnchorFreeYOLO`); cnnkit's default
    detector. The page's per-cell grid form is ``yolo_grid`` (:mod:`cnnkit.tasks.detection.yolo`).

    Args:
        num_classes: object classes.
        backbone: registered classifier whose ``features_only`` maps feed the neck.
        in_chans: image channels.
        **kwargs: :class:`AnchorFreeYOLO` options and the backbone's (``weights=``: its classifier weights).
    """
    return AnchorFreeYOLO(backbone, num_classes, in_chans=in_chans, **kwargs)
