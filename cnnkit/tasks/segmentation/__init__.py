"""Semantic segmentation: U-Net, U-Net++, Attention U-Net, FCN and DeepLabV3 models, their losses, metrics
and task object.

Every model maps images ``(N, C, H, W)`` to logits ``(N, num_classes, H, W)`` at the input's resolution,
for any input size. The models are registered with ``task="segmentation"``; build one by name::

    model = cnnkit.create_model("unet", num_classes=11, in_chans=1, base_channels=16)
    model = cnnkit.create_model("deeplabv3", num_classes=21, backbone="resnet50", output_stride=16)
"""

from __future__ import annotations

from cnnkit.tasks.segmentation.attention_unet import AttentionGate, AttentionUNet
from cnnkit.tasks.segmentation.deeplab import DeepLabV3, DeepLabV3Plus, deeplabv3_resnet50
from cnnkit.tasks.segmentation.fcn import FCN, fcn_resnet50
from cnnkit.tasks.segmentation.losses import cross_entropy, dice_loss, focal_loss
from cnnkit.tasks.segmentation.metrics import (
    SegmentationEvaluator,
    confusion_matrix,
    dice,
    miou,
    per_class_dice,
    per_class_iou,
    pixel_accuracy,
)
from cnnkit.tasks.segmentation.task import ClassMap, SegmentationTask
from cnnkit.tasks.segmentation.unet import BackboneUNet, UNet
from cnnkit.tasks.segmentation.unetplusplus import UNetPlusPlus

__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "BackboneUNet",
    "ClassMap",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FCN",
    "SegmentationEvaluator",
    "SegmentationTask",
    "UNet",
    "UNetPlusPlus",
    "confusion_matrix",
    "cross_entropy",
    "deeplabv3_resnet50",
    "dice",
    "dice_loss",
    "fcn_resnet50",
    "focal_loss",
    "miou",
    "per_class_dice",
    "per_class_iou",
    "pixel_accuracy",
]
