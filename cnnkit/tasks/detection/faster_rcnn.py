"""Faster R-CNN with FPN: backbone + FPN + Region Proposal Network + RoI box head.

Ren et al., "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks", NeurIPS 2015,
with the feature pyramid of Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017::

    images (N, C, H, W) -> backbone stages -> FPN P_2..P_5 (+ P_6 by max pooling, for the RPN only)
      -> RPN (rpn.py): anchors, objectness, deltas -> proposals (P_i, 4) per image
      -> RoIAlign 7x7 from the level k = floor(4 + log2(sqrt(w h) / 224)) (FPN paper eq. 1, clamped to
         the pyramid; ``torchvision.ops.MultiScaleRoIAlign``)
      -> box head: fc6, fc7 (``representation_size``, ReLU) -> class logits (C + 1) and class-specific
         deltas ((C + 1) * 4, BoxCoder weights (10, 10, 5, 5))

Steps, each callable and tested alone: ``forward(images, targets)`` returns the raw outputs; in training mode
with targets it samples the RoIs of the second stage (:meth:`FasterRCNN.sample_rois`) and stores their
targets, so :meth:`FasterRCNN.criterion` only compares; :meth:`FasterRCNN.postprocess` turns eval outputs
into detections. Classes: ``num_classes`` object classes, labels ``0 .. C-1`` in targets and detections;
inside, index 0 of the classifier is the background (torchvision's layout).

Parameter names are torchvision's (``backbone.body``, ``backbone.fpn``, ``rpn.head``,
``roi_heads.box_head.fc6`` / ``fc7``, ``roi_heads.box_predictor``), so with ``num_classes=90``
:func:`fasterrcnn_resnet50_fpn` loads ``torchvision.models.detection.fasterrcnn_resnet50_fpn``'s
``state_dict`` (91 outputs with background) with ``strict=True`` and, on the same normalized images, gives
its proposals and detections (tested; torchvision resizes and normalizes inside, cnnkit does neither).

Small models: defaults are torchvision's COCO settings. For 128x128 MNIST-Det (10 classes, digits of
21-56 px) on a CPU, this config costs a fraction of the default::

    FasterRCNN("resnet18", 10, in_chans=1, out_indices=(-3, -2, -1), fpn_channels=128,
               anchor_sizes=((16,), (32,), (64,), (128,)), rpn_pre_nms_top_n=(600, 300),
               rpn_post_nms_top_n=(300, 100), representation_size=256, box_batch_size_per_image=128,
               sampling_ratio=1)

A training step on 16 such images takes about 2.5-3.5 s on 2 CPU cores: half in the backbone, FPN and RPN
convolutions, a sixth in RoIAlign's backward (which ``sampling_ratio=1`` quarters against the default 2; it
is enough when RoIs span a few cells of the stride-8 level), a tenth in ``fc6`` / ``fc7``. Digits this
small all pool from the finest level (``k`` clamps to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import ops

from cnnkit.errors import ConfigError
from cnnkit.layers import FPN
from cnnkit.models.registry import create_model, register_model
from cnnkit.tasks.detection.anchors import AnchorGenerator
from cnnkit.tasks.detection.boxes import BoxCoder, Matcher, batched_nms, box_iou
from cnnkit.tasks.detection.rpn import SMOOTH_L1_BETA, RegionProposalNetwork, sample_balanced

Outputs = dict[str, Any]
"""The raw outputs of :meth:`FasterRCNN.forward` (tensors, lists of per-image tensors, the image size)."""


class BackboneWithFPN(nn.Module):
    """A registered classifier's stage maps through an :class:`FPN` with a max-pooled extra level.

    The classifier (head removed) is kept as ``body`` and run through its ``forward_intermediates``, so its
    parameter names are those of torchvision's ``BackboneWithFPN`` (``body.layer1...``).

    Args:
        backbone_name: a registered model name, e.g. ``"resnet50"``.
        out_indices: the stages fed to the FPN (indices into the model's ``feature_info``).
        fpn_channels: channels of every pyramid map.
        **backbone_kwargs: passed to :func:`cnnkit.create_model` (e.g. ``in_chans=1``).

    Attributes:
        strides: pixels per cell of each output level, the pooled one included.

    Shape:
        - Input: ``(N, C, H, W)``.
        - Output: ``len(out_indices) + 1`` maps ``(N, fpn_channels, ceil(H / s_l), ceil(W / s_l))``.
    """

    def __init__(
        self, backbone_name: str, out_indices: tuple[int, ...], fpn_channels: int, **backbone_kwargs: Any
    ) -> None:
        super().__init__()
        features = create_model(backbone_name, features_only=True, out_indices=out_indices, **backbone_kwargs)
        self.body = features.model
        self.out_indices = features.out_indices
        reductions = features.feature_info.reduction()
        self.strides = [*reductions, 2 * reductions[-1]]
        self.fpn = FPN(features.feature_info.channels(), fpn_channels, extra_blocks="pool")
        self.out_channels = fpn_channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid maps, finest first, the pooled level last."""
        maps = self.body.forward_intermediates(images)
        return self.fpn([maps[i] for i in self.out_indices])


class TwoMLPHead(nn.Module):
    """Flatten the pooled RoI features, then two fully connected layers with ReLU (``fc6``, ``fc7``).

    Shape:
        ``(R, C, S, S) -> (R, representation_size)`` with ``in_features = C * S * S``.
    """

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """Class logits and class-specific box deltas of each RoI (Fast R-CNN, Girshick 2015, Sec. 2.2).

    Args:
        in_features: representation size.
        num_outputs: classes including the background (index 0).

    Shape:
        ``(R, in_features) -> (R, num_outputs), (R, num_outputs * 4)``; class ``k``'s deltas are columns
        ``4k .. 4k + 3``.
    """

    def __init__(self, in_features: int, num_outputs: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_outputs)
        self.bbox_pred = nn.Linear(in_features, num_outputs * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """The second stage's modules: RoI pooling, box head and box predictor (Mask R-CNN adds its mask ones).

    RoIs are pooled with ``torchvision.ops.MultiScaleRoIAlign`` (``sampling_ratio`` points per bin side)
    from the pyramid levels of the backbone stages (not the pooled extra level), each RoI from level
    ``k = floor(4 + log2(sqrt(w h) / 224))`` clamped to the levels present (FPN paper, eq. 1).

    Args:
        num_levels: pyramid levels RoIs are pooled from.
        in_channels: their channels.
        num_outputs: classes including the background.
        roi_size: side of the pooled grid.
        sampling_ratio: RoIAlign sampling points per bin side.
        representation_size: width of ``fc6`` / ``fc7``.

    Shape:
        ``forward``: pyramid maps and per-image RoIs ``(R_i, 4)`` -> ``(R, num_outputs)`` logits and
        ``(R, num_outputs * 4)`` deltas, ``R = sum_i R_i``.
    """

    def __init__(
        self,
        num_levels: int,
        in_channels: int,
        num_outputs: int,
        roi_size: int = 7,
        sampling_ratio: int = 2,
        representation_size: int = 1024,
    ) -> None:
        super().__init__()
        self.featmap_names = [str(i) for i in range(num_levels)]
        self.box_roi_pool = ops.MultiScaleRoIAlign(self.featmap_names, roi_size, sampling_ratio)
        self.box_head = TwoMLPHead(in_channels * roi_size**2, representation_size)
        self.box_predictor = FastRCNNPredictor(representation_size, num_outputs)

    def pool(
        self,
        pooler: ops.MultiScaleRoIAlign,
        features: Sequence[torch.Tensor],
        rois: Sequence[torch.Tensor],
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """RoIAlign features of every RoI with ``pooler``: ``(R, C, S, S)``."""
        named = {str(i): f for i, f in enumerate(features)}
        return pooler(named, list(rois), [image_size] * len(rois))

    def forward(
        self, features: Sequence[torch.Tensor], rois: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and box deltas of the RoIs of every image."""
        pooled = self.pool(self.box_roi_pool, features, rois, image_size)
        return self.box_predictor(self.box_head(pooled))


def fast_rcnn_loss(
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The second-stage loss of Fast R-CNN (Girshick 2015, eq. 1), normalised as torchvision does.

    ``classifier = (1 / R) sum_r CE(logits_r, u_r)`` and ``box = (1 / R) sum_{r: u_r >= 1}
    smoothL1_{beta=1/9}(t_r^{u_r} - v_r)``: the deltas of the RoI's own class ``u_r`` against its target
    ``v_r``, over the ``R`` sampled RoIs of the batch.

    Args:
        class_logits: ``(R, C + 1)``.
        box_deltas: ``(R, (C + 1) * 4)``.
        labels: ``(R,)`` int64, 0 background.
        regression_targets: ``(R, 4)``.

    Returns:
        ``(classifier, box)`` scalars; zero (with a graph) when ``R = 0``.
    """
    count = max(len(labels), 1)
    classifier = F.cross_entropy(class_logits, labels, reduction="sum") / count
    positive = torch.where(labels > 0)[0]
    own_class = box_deltas.reshape(len(box_deltas), class_logits.shape[1], 4)[positive, labels[positive]]
    box = (
        F.smooth_l1_loss(own_class, regression_targets[positive], beta=SMOOTH_L1_BETA, reduction="sum")
        / count
    )
    return classifier, box


class FasterRCNN(nn.Module):
    """Faster R-CNN with FPN over any registered backbone (module docs).

    Args:
        backbone_name: a registered model name, e.g. ``"resnet50"``.
        num_classes: object classes ``C``, background excluded.
        out_indices: backbone stages fed to the FPN; default its last four.
        fpn_channels: channels of the pyramid and the RPN head.
        anchor_sizes: per pyramid level (the pooled one included), the anchor sizes in pixels; default
            ``(8 * stride_l,)``, torchvision's ``32 .. 512`` on a ResNet.
        aspect_ratios: anchor ratios ``h / w`` at every level.
        rpn_pre_nms_top_n: ``(training, testing)`` anchors kept per level before the proposals' NMS.
        rpn_post_nms_top_n: ``(training, testing)`` proposals kept per image.
        rpn_nms_threshold: IoU of the proposals' NMS.
        rpn_score_threshold: lowest objectness probability of a proposal.
        rpn_fg_iou_threshold / rpn_bg_iou_threshold: anchor IoU for positives / below which negatives.
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss.
        rpn_positive_fraction: largest share of positive anchors in that sample.
        box_roi_size: side of the RoIAlign grid of the box head.
        sampling_ratio: RoIAlign sampling points per bin side.
        representation_size: width of the box head's two fully connected layers.
        box_fg_iou_threshold / box_bg_iou_threshold: RoI IoU for foreground / below which background.
        box_batch_size_per_image: RoIs sampled per image for the box head in training.
        box_positive_fraction: largest share of foreground RoIs in that sample.
        box_reg_weights: :class:`BoxCoder` weights of the second stage.
        **backbone_kwargs: passed to :func:`cnnkit.create_model` (e.g. ``in_chans=1``).

    Shape:
        - Input: ``(N, in_chans, H, W)`` normalized images of one size.
        - Output: see :meth:`forward`.
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        *,
        out_indices: tuple[int, ...] = (-4, -3, -2, -1),
        fpn_channels: int = 256,
        anchor_sizes: Sequence[Sequence[float]] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
        rpn_post_nms_top_n: tuple[int, int] = (2000, 1000),
        rpn_nms_threshold: float = 0.7,
        rpn_score_threshold: float = 0.0,
        rpn_fg_iou_threshold: float = 0.7,
        rpn_bg_iou_threshold: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        box_roi_size: int = 7,
        sampling_ratio: int = 2,
        representation_size: int = 1024,
        box_fg_iou_threshold: float = 0.5,
        box_bg_iou_threshold: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes counts object classes without the background, got {num_classes}")
        if box_batch_size_per_image < 1 or not 0 < box_positive_fraction <= 1:
            raise ConfigError(
                "box_batch_size_per_image must be >= 1 and box_positive_fraction in (0, 1], got "
                f"{box_batch_size_per_image} and {box_positive_fraction}"
            )
        self.backbone = BackboneWithFPN(backbone_name, out_indices, fpn_channels, **backbone_kwargs)
        num_levels = len(self.backbone.strides)
        if anchor_sizes is None:
            anchor_sizes = [(8 * s,) for s in self.backbone.strides]
        if len(anchor_sizes) != num_levels:
            raise ConfigError(
                f"anchor_sizes has {len(anchor_sizes)} levels but the pyramid has {num_levels} "
                f"({len(out_indices)} backbone stages + 1 pooled level)"
            )
        anchors = AnchorGenerator(anchor_sizes, [tuple(aspect_ratios)] * num_levels)
        self.rpn = RegionProposalNetwork(
            anchors,
            fpn_channels,
            pre_nms_top_n=rpn_pre_nms_top_n,
            post_nms_top_n=rpn_post_nms_top_n,
            nms_threshold=rpn_nms_threshold,
            score_threshold=rpn_score_threshold,
            fg_iou_threshold=rpn_fg_iou_threshold,
            bg_iou_threshold=rpn_bg_iou_threshold,
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=rpn_positive_fraction,
        )
        self.roi_heads = RoIHeads(
            num_levels - 1, fpn_channels, num_classes + 1, box_roi_size, sampling_ratio, representation_size
        )
        self.num_classes = num_classes
        self.box_coder = BoxCoder(box_reg_weights)
        self.box_matcher = Matcher(box_fg_iou_threshold, box_bg_iou_threshold)
        self.box_batch_size_per_image = box_batch_size_per_image
        self.box_positive_fraction = box_positive_fraction

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> Outputs:
        """Raw outputs of both stages.

        Args:
            images: normalized images ``(N, C, H, W)``.
            targets: per image ``{"boxes": (G, 4) xyxy pixels, "labels": (G,) int64 in 0 .. C-1}``; used only
                in training mode, to sample the second stage's RoIs.

        Returns:
            ``{"image_size": (H, W)}``, the RPN's outputs (:meth:`RegionProposalNetwork.forward`), ``"rois"``
            (list of ``(R_i, 4)``: the sampled RoIs in training mode with targets, else the proposals),
            ``"class_logits" (R, C + 1)`` and ``"box_deltas" (R, (C + 1) * 4)``; with targets in training
            mode also :meth:`sample_rois`'s targets.
        """
        return self.run_heads(self.backbone(images), (images.shape[-2], images.shape[-1]), targets)

    def run_heads(
        self,
        features: Sequence[torch.Tensor],
        image_size: tuple[int, int],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> Outputs:
        """RPN and box head on pyramid maps (what :meth:`forward` does after the backbone)."""
        outputs: Outputs = {"image_size": image_size, **self.rpn(features, image_size)}
        if self.training and targets is not None:
            if len(targets) != len(features[0]):
                raise ConfigError(f"got {len(targets)} targets for {len(features[0])} images")
            outputs.update(self.sample_rois(outputs["proposals"], targets))
        else:
            outputs["rois"] = outputs["proposals"]
        outputs["class_logits"], outputs["box_deltas"] = self.roi_heads(features, outputs["rois"], image_size)
        return outputs

    @torch.no_grad()
    def sample_rois(
        self, proposals: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Choose the second stage's training RoIs and their targets (Fast R-CNN, Sec. 2.3).

        Each image's ground-truth boxes join its proposals; each candidate takes the label of the ground
        truth it overlaps most if ``IoU >= box_fg_iou_threshold``, else background (0);
        ``box_batch_size_per_image`` candidates are drawn with at most ``box_positive_fraction`` foreground
        (:func:`sample_balanced`), foreground first.

        Returns:
            ``{"rois": list of (R_i, 4), "roi_labels": list of (R_i,) int64 (0 background, class c as
            c + 1), "roi_matched_idxs": list of (R_i,) int64 (index of the matched ground truth, 0 for
            background), "regression_targets": (R, 4) deltas of the matched boxes (zeros for background
            RoIs of images without ground truth)}``.
        """
        rois, labels, matched_idxs, deltas = [], [], [], []
        for image_proposals, target in zip(proposals, targets):
            gt = target["boxes"].to(image_proposals).reshape(-1, 4)
            candidates = torch.cat([image_proposals, gt])
            matches = self.box_matcher(box_iou(gt, candidates))
            clamped = matches.clamp(min=0)
            candidate_labels = torch.zeros_like(matches)
            if len(gt):
                candidate_labels = target["labels"].to(matches)[clamped] + 1
            candidate_labels[matches == Matcher.BELOW_LOW_THRESHOLD] = 0
            candidate_labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
            positive, negative = sample_balanced(
                candidate_labels, self.box_batch_size_per_image, self.box_positive_fraction
            )
            index = torch.cat([positive, negative])
            sampled = candidates[index]
            rois.append(sampled)
            labels.append(candidate_labels[index])
            matched_idxs.append(clamped[index])
            deltas.append(self.box_coder.encode(gt[clamped[index]] if len(gt) else sampled, sampled))
        return {
            "rois": rois,
            "roi_labels": labels,
            "roi_matched_idxs": matched_idxs,
            "regression_targets": torch.cat(deltas),
        }

    def criterion(
        self, outputs: Outputs, targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Faster R-CNN's loss: the RPN's two terms plus the box head's two (Ren et al. 2015, Sec. 3.2).

        ``loss = rpn_objectness + rpn_box + classifier + box_reg``, each term as torchvision computes it
        (:meth:`RegionProposalNetwork.loss`, :func:`fast_rcnn_loss`).

        Args:
            outputs: :meth:`forward`'s outputs in training mode with ``targets``.
            targets: the same targets.

        Returns:
            ``{"loss": total, "rpn_objectness", "rpn_box", "classifier", "box_reg"}`` (the terms detached).

        Raises:
            ConfigError: the outputs hold no sampled RoIs.
        """
        if "roi_labels" not in outputs:
            raise ConfigError(
                "criterion needs the sampled RoIs that forward(images, targets) stores in training mode; "
                "call model.train() and pass the targets to forward"
            )
        rpn_objectness, rpn_box = self.rpn.loss(
            outputs["objectness"], outputs["rpn_deltas"], outputs["anchors"], targets
        )
        classifier, box_reg = fast_rcnn_loss(
            outputs["class_logits"],
            outputs["box_deltas"],
            torch.cat(outputs["roi_labels"]),
            outputs["regression_targets"],
        )
        terms = {
            "rpn_objectness": rpn_objectness,
            "rpn_box": rpn_box,
            "classifier": classifier,
            "box_reg": box_reg,
        }
        return {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def postprocess(
        self,
        outputs: Outputs,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        image_size: tuple[int, int] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image from the RoIs' class-specific boxes and softmax scores.

        Every RoI gives one box per object class, decoded from that class's deltas and clipped to the image;
        pairs scoring above ``score_threshold`` with both sides >= 0.01 px go through class-aware NMS
        (:func:`batched_nms`) and the best ``max_detections`` stay (torchvision's
        ``RoIHeads.postprocess_detections``).

        Args:
            outputs: :meth:`forward`'s outputs (eval mode, or without targets).
            score_threshold: lowest class probability kept.
            iou_threshold: NMS IoU threshold, per class.
            max_detections: detections kept per image.
            image_size: ``(H, W)`` to clip to; default the input size stored in ``outputs``.

        Returns:
            Per image ``{"boxes": (K, 4) xyxy pixels, "scores": (K,), "labels": (K,) int64 in 0 .. C-1}``, by
            decreasing score.
        """
        image_size = tuple(image_size or outputs["image_size"])
        rois = outputs["rois"]
        probabilities = F.softmax(outputs["class_logits"], -1)
        boxes = self.box_coder.decode(
            outputs["box_deltas"].reshape(*probabilities.shape, 4), torch.cat(rois)[:, None]
        )
        boxes = ops.clip_boxes_to_image(boxes, image_size)
        counts = [len(r) for r in rois]
        results = []
        for image_boxes, image_probabilities in zip(boxes.split(counts), probabilities.split(counts)):
            candidates = image_boxes[:, 1:].reshape(-1, 4)
            scores = image_probabilities[:, 1:].reshape(-1)
            labels = torch.arange(self.num_classes, device=scores.device).repeat(len(image_probabilities))
            keep = torch.where(scores > score_threshold)[0]
            keep = keep[ops.remove_small_boxes(candidates[keep], min_size=1e-2)]
            candidates, scores, labels = candidates[keep], scores[keep], labels[keep]
            keep = batched_nms(candidates, scores, labels, iou_threshold)[:max_detections]
            results.append({"boxes": candidates[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


def fasterrcnn_resnet50_fpn(num_classes: int = 90, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN ResNet-50 FPN with torchvision's layout and COCO defaults.

    ``num_classes=90`` matches ``torchvision.models.detection.fasterrcnn_resnet50_fpn`` (91 outputs with the
    background): its ``state_dict`` loads with ``strict=True`` and both give the same proposals and
    detections on the same normalized input (tested). Anchors ``32 .. 512`` on ``P_2 .. P_6``, ratios
    ``0.5, 1, 2``; FPN of 256 channels; RoIAlign 7x7; representation 1024. The backbone's batch norm is
    trainable (torchvision freezes it only with pretrained weights).

    Args:
        num_classes: object classes without the background.
        **kwargs: further :class:`FasterRCNN` options and backbone options (e.g. ``weights``).
    """
    return FasterRCNN("resnet50", num_classes, **kwargs)


@register_model(
    task="detection",
    input_size=(3, 512, 512),
    paper="Ren et al., 2015, Faster R-CNN; Lin et al., 2017, Feature Pyramid Networks",
    extra={"exportable": False},
)
def faster_rcnn(
    num_classes: int = 80, backbone: str = "resnet18", in_chans: int = 3, **kwargs: Any
) -> FasterRCNN:
    """Faster R-CNN with FPN on a registered ``backbone`` (see :class:`FasterRCNN`).

    Args:
        num_classes: object classes without the background.
        backbone: registered classifier whose ``features_only`` maps feed the FPN.
        in_chans: image channels.
        **kwargs: :class:`FasterRCNN` options and the backbone's (``weights=``: its classifier weights).
    """
    return FasterRCNN(backbone, num_classes, in_chans=in_chans, **kwargs)
