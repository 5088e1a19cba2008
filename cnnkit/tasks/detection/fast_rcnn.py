"""Fast R-CNN: one backbone pass per image, RoI pooling of selective-search proposals, a two-layer head.

Girshick, "Fast R-CNN", ICCV 2015::

    images (N, C, H, W) -> selective search (proposals.py): (P_i, 4) boxes per image
    images -> backbone stage map (stride s, one pass per image, shared by all of its RoIs)
      -> RoI max pooling S x S (``torchvision.ops.roi_pool``, Sec. 2.1; ``roi_align`` as an option)
      -> fc6, fc7 (``representation_size``, ReLU) -> softmax over C + 1 classes and class-specific box
         deltas ((C + 1) * 4, BoxCoder weights (10, 10, 5, 5))

Training (Sec. 2.3): mini-batches of ``N = 2`` images and ``R = 128`` RoIs, 64 per image, a quarter of them
foreground (IoU >= 0.5 with a ground-truth box, the ground-truth boxes themselves included), the rest
background with a best IoU in ``[0.1, 0.5)`` (the lower bound "appears to act as a heuristic for hard example
mining"); the multi-task loss ``L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)`` with ``lambda = 1``
(:func:`~cnnkit.tasks.detection.faster_rcnn.fast_rcnn_loss`).

This head is the second stage Faster R-CNN kept (Ren et al. 2015 replaced only the proposals), so the fully
connected layers, the predictor, the loss, the RoI sampling and the detection decoding are the ones of
:mod:`~cnnkit.tasks.detection.faster_rcnn`; what differs is where the proposals come from and the single,
unpyramided feature map they are pooled from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision import ops

from cnnkit.errors import ConfigError
from cnnkit.models.registry import register_model
from cnnkit.tasks.detection.boxes import BoxCoder, Matcher, box_iou
from cnnkit.tasks.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead, fast_rcnn_loss
from cnnkit.tasks.detection.proposals import SelectiveSearch
from cnnkit.tasks.detection.rcnn import StageBackbone

Outputs = dict[str, Any]
POOLERS = ("roi_pool", "roi_align")


class FastRCNN(nn.Module):
    """Fast R-CNN over a registered backbone, with selective-search proposals (module docs).

    Args:
        backbone_name: a registered classifier.
        num_classes: object classes ``C``, background excluded.
        out_index: the backbone stage RoIs are pooled from (the paper's conv5 has stride 16).
        pooler: ``"roi_pool"`` (the paper's max pooling) or ``"roi_align"`` (bilinear, Mask R-CNN's).
        roi_size: side ``S`` of the pooled grid (7 for VGG16 in the paper).
        sampling_ratio: RoIAlign's sampling points per bin side.
        representation_size: width of fc6 / fc7 (4096 in the paper).
        batch_size_per_image: RoIs sampled per image in training (64).
        positive_fraction: largest share of foreground among them (0.25).
        fg_iou_threshold: IoU from which a RoI is foreground (0.5).
        bg_iou_low: lowest best IoU of a background RoI (0.1); ``0`` keeps every background.
        box_reg_weights: :class:`BoxCoder` weights.
        proposals: :class:`SelectiveSearch` options (``mode``, ``max_proposals``, ``scale``, ``cache``...).
        **backbone_kwargs: passed to :func:`cnnkit.create_model`.

    Shape:
        - Input: ``(N, in_chans, H, W)`` normalized images.
        - Output: see :meth:`forward`.
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        *,
        out_index: int = -2,
        pooler: str = "roi_pool",
        roi_size: int = 7,
        sampling_ratio: int = 2,
        representation_size: int = 1024,
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.25,
        fg_iou_threshold: float = 0.5,
        bg_iou_low: float = 0.1,
        box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        proposals: dict[str, Any] | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes counts object classes without the background, got {num_classes}")
        if pooler not in POOLERS:
            raise ConfigError(f"pooler must be one of {POOLERS}, got {pooler!r}")
        if batch_size_per_image < 1 or not 0 < positive_fraction <= 1:
            raise ConfigError(
                "batch_size_per_image must be >= 1 and positive_fraction in (0, 1], got "
                f"{batch_size_per_image} and {positive_fraction}"
            )
        self.proposals = SelectiveSearch(**(proposals or {}))
        self.backbone = StageBackbone(backbone_name, out_index, **backbone_kwargs)
        self.pooler, self.roi_size, self.sampling_ratio = pooler, roi_size, sampling_ratio
        self.box_head = TwoMLPHead(self.backbone.out_channels * roi_size**2, representation_size)
        self.box_predictor = FastRCNNPredictor(representation_size, num_classes + 1)
        self.num_classes = num_classes
        self.box_coder = BoxCoder(box_reg_weights)
        self.box_matcher = Matcher(fg_iou_threshold, fg_iou_threshold)
        self.box_batch_size_per_image = batch_size_per_image
        self.box_positive_fraction = positive_fraction
        self.bg_iou_low = bg_iou_low

    def pool(self, features: torch.Tensor, rois: Sequence[torch.Tensor]) -> torch.Tensor:
        """RoI max pooling (or RoIAlign) of every RoI from its image's map.

        Shape:
            ``(N, C, H_f, W_f)`` and per-image ``(R_i, 4)`` pixel boxes -> ``(R, C, S, S)``.
        """
        scale = 1.0 / self.backbone.stride
        boxes = [r.to(features.dtype) for r in rois]
        if self.pooler == "roi_pool":
            return ops.roi_pool(features, boxes, self.roi_size, scale)
        return ops.roi_align(features, boxes, self.roi_size, scale, self.sampling_ratio, aligned=True)

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> Outputs:
        """Raw outputs: proposals, then one backbone pass and the head on each image's RoIs.

        Args:
            images: normalized images ``(N, C, H, W)``.
            targets: per image ``{"boxes": (G, 4), "labels": (G,)}``; in training mode they pick the RoIs.

        Returns:
            ``{"image_size": (H, W), "proposals": list of (P_i, 4), "rois": list of (R_i, 4) (the sampled RoIs
            in training with targets, else the proposals), "class_logits": (R, C + 1), "box_deltas":
            (R, (C + 1) * 4)}``, and in training the sampled RoIs' targets (:meth:`sample_rois`).
        """
        image_size = (images.shape[-2], images.shape[-1])
        proposals = self.proposals(images)
        outputs: Outputs = {"image_size": image_size, "proposals": proposals}
        if self.training and targets is not None:
            outputs.update(self.sample_rois(self.background_candidates(proposals, targets), targets))
        else:
            outputs["rois"] = proposals
        features = self.backbone(images)
        pooled = self.pool(features, outputs["rois"])
        outputs["class_logits"], outputs["box_deltas"] = self.box_predictor(self.box_head(pooled))
        return outputs

    @torch.no_grad()
    def background_candidates(
        self, proposals: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Each image's proposals without those whose best IoU with its ground truth is below
        ``bg_iou_low`` (Sec. 2.3); an image without ground truth keeps all of them."""
        kept = []
        for boxes, target in zip(proposals, targets):
            gt = target["boxes"].to(boxes).reshape(-1, 4)
            if len(gt) and len(boxes) and self.bg_iou_low > 0:
                boxes = boxes[box_iou(gt, boxes).amax(0) >= self.bg_iou_low]
            kept.append(boxes)
        return kept

    sample_rois = FasterRCNN.sample_rois
    postprocess = FasterRCNN.postprocess

    def criterion(
        self, outputs: Outputs, targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The multi-task loss ``classifier + box_reg`` (Sec. 2.3, :func:`fast_rcnn_loss`).

        Returns:
            ``{"loss": total, "classifier", "box_reg"}`` (the parts detached).

        Raises:
            ConfigError: the outputs hold no sampled RoIs (forward ran in eval mode or without targets).
        """
        if "roi_labels" not in outputs:
            raise ConfigError(
                "criterion needs the sampled RoIs that forward(images, targets) stores in training mode; "
                "call model.train() and pass the targets to forward"
            )
        classifier, box_reg = fast_rcnn_loss(
            outputs["class_logits"],
            outputs["box_deltas"],
            torch.cat(outputs["roi_labels"]),
            outputs["regression_targets"],
        )
        return {"loss": classifier + box_reg, "classifier": classifier.detach(), "box_reg": box_reg.detach()}


@register_model(
    task="detection",
    input_size=(3, 512, 512),
    paper="Girshick, 2015, Fast R-CNN; Uijlings et al., 2013, Selective Search",
    extra={"exportable": False},
)
def fast_rcnn(
    num_classes: int = 80, backbone: str = "resnet18", in_chans: int = 3, **kwargs: Any
) -> FastRCNN:
    """Fast R-CNN on a registered ``backbone`` with selective-search proposals (see :class:`FastRCNN`).

    Args:
        num_classes: object classes without the background.
        backbone: registered classifier whose ``features_only`` stage map the RoIs are pooled from.
        in_chans: image channels.
        **kwargs: :class:`FastRCNN` options and the backbone's (``weights=``: its classifier weights).
    """
    return FastRCNN(backbone, num_classes, in_chans=in_chans, **kwargs)
