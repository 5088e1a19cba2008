"""Region Proposal Network (Ren et al., "Faster R-CNN", NeurIPS 2015, Sec. 3.1), over FPN levels.

A small conv net slides over every pyramid level and predicts, for each anchor (:class:`AnchorGenerator`
layout: level, row, column, anchor type), an objectness logit and box deltas (:class:`BoxCoder` with weights
``(1, 1, 1, 1)``). Proposals are the decoded anchors, filtered as torchvision's ``RegionProposalNetwork``
does, so that with the same weights both give the same proposals (tested):

1. per level, the ``pre_nms_top_n`` anchors of highest objectness;
2. clip to the image, drop boxes with a side below ``min_size`` (``1e-3``) or a score ``sigmoid(logit)``
   below ``score_threshold``;
3. NMS at ``nms_threshold`` separately per level (FPN paper, Lin et al. 2017, Sec. 5.1);
4. keep the ``post_nms_top_n`` best over all levels, by decreasing score.

Training (Sec. 3.1.2): anchors match ground truth by IoU (:class:`Matcher`, positive from 0.7, negative
below 0.3, each ground truth's best anchors positive too); 256 anchors per image are sampled with at most half
positives, and the loss is

    L = (1 / S) sum_sampled BCE(p_i, p*_i)  +  (1 / S) sum_positive smoothL1_{beta=1/9}(t_i - t*_i)

with ``S`` the number of anchors sampled in the whole batch (torchvision's normalisation; the paper's
``lambda = 10`` with ``N_reg ~ 2400`` anchor locations weighs the terms about equally too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import ops

from cnnkit.errors import ConfigError
from cnnkit.layers import ConvNormAct
from cnnkit.tasks.detection.anchors import AnchorGenerator
from cnnkit.tasks.detection.boxes import BoxCoder, Matcher, batched_nms, box_iou

SMOOTH_L1_BETA = 1 / 9
"""Transition point of the smooth-L1 box losses of both stages (torchvision's and Detectron's value)."""


def sample_balanced(
    labels: torch.Tensor,
    batch_size: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a mini-batch of positives and negatives (Faster R-CNN, Sec. 3.1.3).

    At most ``floor(batch_size * positive_fraction)`` positives are drawn uniformly without replacement; the
    rest of the batch is filled with negatives (fewer when there are not enough).

    Args:
        labels: per candidate, ``>= 1`` positive, ``0`` negative, ``-1`` ignored.
        batch_size: candidates drawn.
        positive_fraction: largest share of positives.
        generator: random source; ``None`` draws from torch's global generator (the Trainer seeds it).

    Returns:
        ``(positive_indices, negative_indices)``, int64.

    Shape:
        ``(T,) -> (P,), (Q,)`` with ``P + Q <= batch_size``.
    """
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_positive = min(positive.numel(), int(batch_size * positive_fraction))
    num_negative = min(negative.numel(), batch_size - num_positive)
    device = labels.device
    pick_positive = torch.randperm(positive.numel(), device=device, generator=generator)[:num_positive]
    pick_negative = torch.randperm(negative.numel(), device=device, generator=generator)[:num_negative]
    return positive[pick_positive], negative[pick_negative]


class RPNHead(nn.Module):
    """A 3x3 conv + ReLU, then 1x1 convs to ``A`` objectness logits and ``4A`` box deltas per cell.

    Shared by all levels. Parameter names are torchvision's ``RPNHead`` (``conv.0.0``, ``cls_logits``,
    ``bbox_pred``); weights start from ``N(0, 0.01^2)``, biases from 0 (Sec. 3.1.3).

    Args:
        in_channels: channels of the pyramid maps.
        num_anchors: anchors per cell ``A``.

    Shape:
        - Input: list of ``(N, in_channels, H_l, W_l)``.
        - Output: lists of ``(N, A, H_l, W_l)`` logits and ``(N, 4A, H_l, W_l)`` deltas (anchor ``a``'s at
          channels ``4a .. 4a + 3``).
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvNormAct(in_channels, in_channels, 3, norm_layer=None))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Objectness logits and box deltas of every level."""
        logits, deltas = [], []
        for level in features:
            hidden = self.conv(level)
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


def flatten_rpn_outputs(
    logits: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the head's per-level maps in anchor order (level, row, column, anchor type).

    Shape:
        lists of ``(N, A, H_l, W_l)`` and ``(N, 4A, H_l, W_l)`` -> ``(N, T)`` and ``(N, T, 4)``,
        ``T = sum_l H_l W_l A``.
    """
    flat_logits, flat_deltas = [], []
    for logit, delta in zip(logits, deltas):
        n, a, h, w = logit.shape
        flat_logits.append(logit.permute(0, 2, 3, 1).reshape(n, -1))
        flat_deltas.append(delta.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return torch.cat(flat_logits, 1), torch.cat(flat_deltas, 1)


class RegionProposalNetwork(nn.Module):
    """Anchors, the :class:`RPNHead`, proposal filtering and the RPN loss (module docs).

    Args:
        anchor_generator: anchors of every level.
        in_channels: channels of the pyramid maps.
        pre_nms_top_n: ``(training, testing)`` anchors kept per level before NMS.
        post_nms_top_n: ``(training, testing)`` proposals kept per image after NMS.
        nms_threshold: IoU of the per-level NMS.
        score_threshold: lowest objectness probability kept.
        min_size: smallest proposal side in pixels.
        fg_iou_threshold: IoU from which an anchor is positive.
        bg_iou_threshold: IoU below which an anchor is negative.
        batch_size_per_image: anchors sampled per image for the loss.
        positive_fraction: largest share of positives among them.

    Shape:
        ``forward``: list of ``(N, in_channels, H_l, W_l)`` -> see :meth:`forward`.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        in_channels: int,
        pre_nms_top_n: tuple[int, int] = (2000, 1000),
        post_nms_top_n: tuple[int, int] = (2000, 1000),
        nms_threshold: float = 0.7,
        score_threshold: float = 0.0,
        min_size: float = 1e-3,
        fg_iou_threshold: float = 0.7,
        bg_iou_threshold: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        per_level = anchor_generator.num_anchors_per_location()
        if len(set(per_level)) != 1:
            raise ConfigError(
                f"the RPN head is shared, so every level needs as many anchors, got {per_level}"
            )
        for name, pair in (("pre_nms_top_n", pre_nms_top_n), ("post_nms_top_n", post_nms_top_n)):
            if len(pair) != 2 or min(pair) < 1:
                raise ConfigError(f"rpn {name} must be (training, testing) counts >= 1, got {pair}")
        if batch_size_per_image < 1 or not 0 < positive_fraction <= 1:
            raise ConfigError(
                f"rpn batch_size_per_image must be >= 1 and positive_fraction in (0, 1], got "
                f"{batch_size_per_image} and {positive_fraction}"
            )
        self.anchor_generator = anchor_generator
        self.head = RPNHead(in_channels, per_level[0])
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=True)
        self.pre_nms_top_n = tuple(pre_nms_top_n)
        self.post_nms_top_n = tuple(post_nms_top_n)
        self.nms_threshold = nms_threshold
        self.score_threshold = score_threshold
        self.min_size = min_size
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def anchors(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> list[torch.Tensor]:
        """Anchors of each level for ``image_size`` ``(H, W)``.

        A level's stride is ``(H // H_l, W // W_l)``, torchvision's rule (the true stride whenever ``H`` and
        ``W`` are multiples of the coarsest level's).
        """
        sizes = [tuple(f.shape[-2:]) for f in features]
        strides = [(image_size[0] // h, image_size[1] // w) for h, w in sizes]
        return self.anchor_generator(sizes, strides, features[0].dtype)

    def forward(
        self, features: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Objectness, deltas and the filtered proposals of every image.

        Args:
            features: pyramid maps, finest first.
            image_size: ``(H, W)`` of the input images.

        Returns:
            ``{"anchors": (T, 4), "objectness": (N, T) logits, "rpn_deltas": (N, T, 4), "proposals": list of
            (P_i, 4) xyxy pixels, "proposal_scores": list of (P_i,) probabilities}``; proposals are detached
            (Faster R-CNN's approximate joint training does not backpropagate through them).
        """
        logits, deltas = self.head(features)
        per_level = self.anchors(features, image_size)
        anchors = torch.cat(per_level)
        objectness, rpn_deltas = flatten_rpn_outputs(logits, deltas)
        decoded = self.box_coder.decode(rpn_deltas.detach(), anchors)
        proposals, scores = self.filter_proposals(
            decoded, objectness.detach(), [len(a) for a in per_level], image_size
        )
        return {
            "anchors": anchors,
            "objectness": objectness,
            "rpn_deltas": rpn_deltas,
            "proposals": proposals,
            "proposal_scores": scores,
        }

    def filter_proposals(
        self,
        boxes: torch.Tensor,
        logits: torch.Tensor,
        num_anchors_per_level: Sequence[int],
        image_size: tuple[int, int],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Steps 1-4 of the module docs, with the training or testing top-n of the current mode.

        Shape:
            ``(N, T, 4), (N, T)`` -> lists of ``(P_i, 4)`` and ``(P_i,)``.
        """
        mode = 0 if self.training else 1
        top, offset = [], 0
        for level_logits in logits.split(list(num_anchors_per_level), 1):
            k = min(self.pre_nms_top_n[mode], level_logits.shape[1])
            top.append(level_logits.topk(k, dim=1).indices + offset)
            offset += level_logits.shape[1]
        top = torch.cat(top, 1)
        levels = torch.cat(
            [torch.full((n,), i, device=logits.device) for i, n in enumerate(num_anchors_per_level)]
        )[top]
        rows = torch.arange(len(boxes), device=boxes.device)[:, None]
        boxes, scores = boxes[rows, top], logits[rows, top].sigmoid()
        proposals, proposal_scores = [], []
        for image_boxes, image_scores, image_levels in zip(boxes, scores, levels):
            image_boxes = ops.clip_boxes_to_image(image_boxes, image_size)
            keep = ops.remove_small_boxes(image_boxes, self.min_size)
            keep = keep[image_scores[keep] >= self.score_threshold]
            image_boxes, image_scores, image_levels = (
                image_boxes[keep],
                image_scores[keep],
                image_levels[keep],
            )
            keep = batched_nms(image_boxes, image_scores, image_levels, self.nms_threshold)
            keep = keep[: self.post_nms_top_n[mode]]
            proposals.append(image_boxes[keep])
            proposal_scores.append(image_scores[keep])
        return proposals, proposal_scores

    @torch.no_grad()
    def assign_targets(
        self, anchors: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor labels and regression targets of each image (Sec. 3.1.2).

        Returns:
            ``labels (N, T)`` float, ``1`` positive, ``0`` negative, ``-1`` ignored, and ``deltas (N, T, 4)``
            of each anchor's matched ground truth (zeros where there is none).
        """
        labels, deltas = [], []
        for target in targets:
            gt = target["boxes"].to(anchors).reshape(-1, 4)
            matches = self.matcher(box_iou(gt, anchors))
            image_labels = (matches >= 0).to(anchors.dtype)
            image_labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1.0
            matched = gt[matches.clamp(min=0)] if len(gt) else anchors
            labels.append(image_labels)
            deltas.append(self.box_coder.encode(matched, anchors))
        return torch.stack(labels), torch.stack(deltas)

    def loss(
        self,
        objectness: torch.Tensor,
        rpn_deltas: torch.Tensor,
        anchors: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The RPN loss of the module docs: ``(objectness BCE, box smooth-L1)``, both divided by ``S``.

        Shape:
            ``(N, T), (N, T, 4), (T, 4)`` -> two scalars.
        """
        labels, target_deltas = self.assign_targets(anchors, targets)
        positives, negatives = [], []
        for i, image_labels in enumerate(labels):
            pos, neg = sample_balanced(image_labels, self.batch_size_per_image, self.positive_fraction)
            positives.append(pos + i * labels.shape[1])
            negatives.append(neg + i * labels.shape[1])
        positive, negative = torch.cat(positives), torch.cat(negatives)
        sampled = torch.cat([positive, negative])
        box_loss = F.smooth_l1_loss(
            rpn_deltas.reshape(-1, 4)[positive],
            target_deltas.reshape(-1, 4)[positive],
            beta=SMOOTH_L1_BETA,
            reduction="sum",
        ) / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.reshape(-1)[sampled], labels.reshape(-1)[sampled], reduction="sum"
        ) / max(sampled.numel(), 1)
        return objectness_loss, box_loss
