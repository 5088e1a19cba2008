"""Mask R-CNN: Faster R-CNN plus a small FCN predicting a mask inside each box.

He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017. After the box branch of :class:`FasterRCNN`::

    RoIs -> RoIAlign 14x14 (same FPN level rule as the box head) -> 4 x (3x3 conv, ReLU)
         -> 2x2 transposed conv stride 2, ReLU -> 1x1 conv: (C + 1) mask logits of 28 x 28 per RoI

Each class has its own mask (Sec. 3: decoupling masks from classification); only the mask of the RoI's class
is used. Training: the mask branch runs on the foreground RoIs of the box sample; the target of a RoI is its
matched ground-truth mask cropped to the RoI and resampled to 28 x 28 by RoIAlign (``torchvision.ops.
roi_align``, as torchvision does), and the loss is the mean per-pixel binary cross-entropy
``L_mask = mean BCE(m_k, target)`` with ``k`` the RoI's class. Inference: the mask branch runs on the final
detections (after NMS), in :meth:`MaskRCNN.postprocess`, and each probability map is pasted into the image
(:func:`paste_masks`).

Parameter names are torchvision's (``roi_heads.mask_head.{i}.0``, ``roi_heads.mask_predictor.conv5_mask`` /
``mask_fcn_logits``): :func:`maskrcnn_resnet50_fpn` loads ``torchvision.models.detection.
maskrcnn_resnet50_fpn``'s ``state_dict`` with ``strict=True`` and gives its detections and 28 x 28 mask
probabilities (tested). For a small CPU model use the Faster R-CNN small config (see
:mod:`cnnkit.tasks.detection.faster_rcnn`) with e.g. ``mask_channels=64, mask_layers=2``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import ops

from cnnkit.errors import ConfigError
from cnnkit.layers import ConvNormAct
from cnnkit.models.registry import register_model
from cnnkit.tasks.detection.faster_rcnn import FasterRCNN, Outputs


class MaskRCNNHeads(nn.Sequential):
    """The mask branch's FCN: ``layers`` 3x3 convs with ReLU (children ``{i}.0`` as torchvision's).

    Shape:
        ``(R, in_channels, S, S) -> (R, channels, S, S)``.
    """

    def __init__(self, in_channels: int, channels: int, layers: int) -> None:
        super().__init__(
            *(
                ConvNormAct(in_channels if i == 0 else channels, channels, 3, norm_layer=None)
                for i in range(layers)
            )
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """2x upsampling by a 2x2 transposed conv with ReLU, then a 1x1 conv to one mask logit map per class.

    Shape:
        ``(R, in_channels, S, S) -> (R, num_outputs, 2S, 2S)``.
    """

    def __init__(self, in_channels: int, channels: int, num_outputs: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", nn.ConvTranspose2d(in_channels, channels, 2, 2)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("mask_fcn_logits", nn.Conv2d(channels, num_outputs, 1)),
                ]
            )
        )
        for m in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)


@torch.no_grad()
def project_masks_on_boxes(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Mask targets: each ground-truth mask cropped to its RoI and resampled to ``size x size``.

    ``torchvision.ops.roi_align`` with spatial scale 1, adaptive sampling and ``aligned=False``, as
    torchvision's ``project_masks_on_boxes``: values are the mean of bilinear samples of the mask in the
    bin, with mask pixel ``i`` at coordinate ``i`` (torchvision's legacy convention, half a pixel off the
    box's; kept so that its Mask R-CNN weights and losses carry over, and followed by :func:`paste_masks`).

    Args:
        masks: the RoIs' matched ground-truth masks, any numeric type (non-zero inside).
        boxes: the RoIs, ``xyxy`` pixels.
        size: side of the targets.

    Shape:
        ``(P, H, W), (P, 4) -> (P, size, size)`` float.
    """
    if len(boxes) == 0:
        return boxes.new_zeros(0, size, size)
    index = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)
    rois = torch.cat([index[:, None], boxes], 1)
    return ops.roi_align(masks[:, None].to(boxes), rois, (size, size), 1.0)[:, 0]


def mask_loss(mask_logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mask R-CNN's ``L_mask``: mean per-pixel BCE of each RoI's own-class mask logits (He et al., Sec. 3).

    Args:
        mask_logits: ``(P, C + 1, M, M)``.
        labels: ``(P,)`` the RoIs' classes (background 0 excluded by the caller).
        targets: ``(P, M, M)`` in ``[0, 1]``.

    Returns:
        A scalar; zero (with a graph) when ``P = 0``.
    """
    if len(labels) == 0:
        return mask_logits.sum() * 0
    own = mask_logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(own, targets)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Paste ``M x M`` mask probabilities into the image, each stretched over its box.

    Uses the pixel convention of the training targets (:func:`project_masks_on_boxes`): image pixel ``i`` sits
    at coordinate ``i``, and mask cell ``j`` of a box ``[x1, x2]`` at ``x1 + (j + 1/2) (x2 - x1) / M``. So pixel
    ``(x, y)`` reads the mask bilinearly at ``((x - x1) / (x2 - x1) M - 1/2, (y - y1) / (y2 - y1) M - 1/2)``
    in cells, with zeros around the mask (``grid_sample``, zero padding, ``align_corners=False``): a
    vectorized paste in the manner of Detectron2's ``paste_masks_in_image``, in place of torchvision's
    per-box loop that resizes each mask to its integer-rounded box. An all-ones mask on a box with integer
    corners and sides up to ``M`` gives 1 on the pixels strictly inside, 1/2 on the border pixels ``x1``,
    ``x2``, ``y1``, ``y2`` (1/4 at the corners): the box's area in total.

    Args:
        masks: probabilities.
        boxes: ``xyxy`` pixels.
        image_size: ``(H, W)``.

    Shape:
        ``(K, M, M), (K, 4) -> (K, H, W)``.
    """
    height, width = image_size
    if len(masks) == 0:
        return masks.new_zeros(0, height, width)
    boxes = boxes.to(masks.dtype)
    x1, y1, x2, y2 = boxes.unbind(1)
    xs = torch.arange(width, device=masks.device, dtype=masks.dtype)
    ys = torch.arange(height, device=masks.device, dtype=masks.dtype)
    tiny = torch.finfo(masks.dtype).eps
    grid_x = (xs[None] - x1[:, None]) / (x2 - x1).clamp(min=tiny)[:, None] * 2 - 1
    grid_y = (ys[None] - y1[:, None]) / (y2 - y1).clamp(min=tiny)[:, None] * 2 - 1
    grid = torch.stack(
        [grid_x[:, None, :].expand(-1, height, -1), grid_y[:, :, None].expand(-1, -1, width)], dim=-1
    )
    return F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[
        :, 0
    ]


class MaskRCNN(FasterRCNN):
    """Mask R-CNN over any registered backbone (module docs).

    Args:
        backbone_name: a registered model name, e.g. ``"resnet50"``.
        num_classes: object classes ``C``, background excluded.
        mask_roi_size: side of the mask branch's RoIAlign grid; masks are twice that.
        mask_channels: channels of the mask FCN and of the upsampling.
        mask_layers: 3x3 convs of the mask FCN.
        **kwargs: :class:`FasterRCNN` options and backbone options (e.g. ``in_chans=1``).

    Shape:
        - Input: ``(N, in_chans, H, W)`` normalized images of one size.
        - Output: see :meth:`forward`.
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        *,
        mask_roi_size: int = 14,
        mask_channels: int = 256,
        mask_layers: int = 4,
        **kwargs: Any,
    ) -> None:
        if mask_roi_size < 1 or mask_channels < 1 or mask_layers < 1:
            raise ConfigError(
                "mask_roi_size, mask_channels and mask_layers must be >= 1, got "
                f"{mask_roi_size}, {mask_channels} and {mask_layers}"
            )
        super().__init__(backbone_name, num_classes, **kwargs)
        heads = self.roi_heads
        heads.mask_roi_pool = ops.MultiScaleRoIAlign(
            heads.featmap_names, mask_roi_size, heads.box_roi_pool.sampling_ratio
        )
        heads.mask_head = MaskRCNNHeads(self.backbone.out_channels, mask_channels, mask_layers)
        heads.mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels, num_classes + 1)
        self.mask_size = 2 * mask_roi_size

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> Outputs:
        """Raw outputs of :meth:`FasterRCNN.forward`, plus the mask branch's.

        Args:
            images: normalized images ``(N, C, H, W)``.
            targets: per image ``{"boxes": (G, 4), "labels": (G,), "masks": (G, H, W) uint8}``; used only in
                training mode.

        Returns:
            In training mode with targets, also ``"mask_logits" (P, C + 1, M, M)`` of the ``P`` foreground
            RoIs, their ``"mask_labels" (P,)`` (class + 1) and ``"mask_targets" (P, M, M)``; otherwise
            ``"features"``, the pyramid maps :meth:`postprocess` runs the mask branch on.
        """
        image_size = (images.shape[-2], images.shape[-1])
        features = self.backbone(images)
        outputs = self.run_heads(features, image_size, targets)
        if "roi_labels" not in outputs:
            outputs["features"] = features
            return outputs
        foreground = [labels > 0 for labels in outputs["roi_labels"]]
        mask_rois = [rois[keep] for rois, keep in zip(outputs["rois"], foreground)]
        outputs["mask_logits"] = self.mask_logits(features, mask_rois, image_size)
        outputs["mask_labels"] = torch.cat(
            [labels[keep] for labels, keep in zip(outputs["roi_labels"], foreground)]
        )
        outputs["mask_targets"] = torch.cat(
            [
                project_masks_on_boxes(target["masks"][matched[keep]], rois, self.mask_size)
                for target, matched, keep, rois in zip(
                    targets, outputs["roi_matched_idxs"], foreground, mask_rois
                )
            ]
        )
        return outputs

    def mask_logits(
        self, features: Sequence[torch.Tensor], rois: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> torch.Tensor:
        """The mask branch on per-image RoIs: ``(R, C + 1, M, M)`` logits, ``R = sum_i R_i``."""
        heads = self.roi_heads
        pooled = heads.pool(heads.mask_roi_pool, features, rois, image_size)
        return heads.mask_predictor(heads.mask_head(pooled))

    def criterion(
        self, outputs: Outputs, targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Faster R-CNN's four terms plus the mask term: ``loss = L_cls + L_box + L_mask`` (He et al., Sec. 3).

        Returns:
            ``{"loss": total, "rpn_objectness", "rpn_box", "classifier", "box_reg", "mask"}`` (terms detached).
        """
        losses = super().criterion(outputs, targets)
        mask = mask_loss(outputs["mask_logits"], outputs["mask_labels"], outputs["mask_targets"])
        return {**losses, "loss": losses["loss"] + mask, "mask": mask.detach()}

    @torch.no_grad()
    def mask_probabilities(
        self,
        features: Sequence[torch.Tensor],
        boxes: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        image_size: tuple[int, int],
    ) -> list[torch.Tensor]:
        """``sigmoid`` of each box's own-class mask logits (labels ``0 .. C-1``): per image ``(K_i, M, M)``."""
        probabilities = self.mask_logits(features, boxes, image_size).sigmoid()
        own = probabilities[
            torch.arange(len(probabilities), device=probabilities.device), torch.cat(labels) + 1
        ]
        return list(own.split([len(b) for b in boxes]))

    @torch.no_grad()
    def postprocess(
        self,
        outputs: Outputs,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        image_size: tuple[int, int] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """:meth:`FasterRCNN.postprocess`'s detections, each with its mask pasted into the image.

        Returns:
            Per image ``{"boxes": (K, 4), "scores": (K,), "labels": (K,), "masks": (K, H, W)}``, masks as
            probabilities (threshold at 0.5 for binary masks), ``(H, W) = image_size``.

        Raises:
            ConfigError: ``outputs`` come from a training forward with targets (no pyramid maps kept).
        """
        if "features" not in outputs:
            raise ConfigError("Mask R-CNN postprocess needs outputs of forward(images) in eval mode")
        detections = super().postprocess(outputs, score_threshold, iou_threshold, max_detections, image_size)
        image_size = tuple(image_size or outputs["image_size"])
        probabilities = self.mask_probabilities(
            outputs["features"],
            [d["boxes"] for d in detections],
            [d["labels"] for d in detections],
            outputs["image_size"],
        )
        for detection, masks in zip(detections, probabilities):
            detection["masks"] = paste_masks(masks, detection["boxes"], image_size)
        return detections


def maskrcnn_resnet50_fpn(num_classes: int = 90, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN ResNet-50 FPN with torchvision's layout and COCO defaults.

    ``num_classes=90`` matches ``torchvision.models.detection.maskrcnn_resnet50_fpn`` (91 outputs with the
    background): its ``state_dict`` loads with ``strict=True`` and both give the same detections and mask
    probabilities on the same normalized input (tested). Box branch as :func:`fasterrcnn_resnet50_fpn`; mask
    branch RoIAlign 14x14, four 3x3 convs of 256, 28 x 28 masks.

    Args:
        num_classes: object classes without the background.
        **kwargs: further :class:`MaskRCNN` options and backbone options.
    """
    return MaskRCNN("resnet50", num_classes, **kwargs)


@register_model(
    task="instance_segmentation",
    input_size=(3, 512, 512),
    paper="He et al., 2017, Mask R-CNN",
    extra={"exportable": False},
)
def mask_rcnn(
    num_classes: int = 80, backbone: str = "resnet18", in_chans: int = 3, **kwargs: Any
) -> MaskRCNN:
    """Mask R-CNN with FPN on a registered ``backbone`` (see :class:`MaskRCNN`).

    Args:
        num_classes: object classes without the background.
        backbone: registered classifier whose ``features_only`` maps feed the FPN.
        in_chans: image channels.
        **kwargs: :class:`MaskRCNN` options and the backbone's (``weights=``: its classifier weights).
    """
    return MaskRCNN(backbone, num_classes, in_chans=in_chans, **kwargs)
