"""Semantic segmentation: U-Net, FCN and DeepLabV3 models, their losses, metrics and task object.

Every model maps images ``(N, C, H, W)`` to logits ``(N, num_classes, H, W)`` at the input's resolution,
for any input size. Build one by name::

    model = create_model("unet", num_classes=11, in_chans=1, base_channels=16)
    model = create_model("deeplabv3", num_classes=21, backbone="resnet50", output_stride=16)
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from cnnkit.errors import ConfigError, did_you_mean
from cnnkit.tasks.detection.mask_rcnn import MaskRCNN
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
from cnnkit.tasks.segmentation.task import SegmentationTask
from cnnkit.tasks.segmentation.unet import BackboneUNet, UNet

MODELS = ("unet", "fcn", "deeplabv3", "deeplabv3plus", "mask_rcnn")

__all__ = [
    "MODELS",
    "BackboneUNet",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FCN",
    "SegmentationEvaluator",
    "SegmentationTask",
    "UNet",
    "confusion_matrix",
    "create_model",
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


def create_model(name: str, *, num_classes: int, backbone: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a semantic-segmentation model by name.

    Args:
        name: ``"unet"`` (the classic :class:`UNet` without ``backbone``, else :class:`BackboneUNet`),
            ``"fcn"`` (:class:`FCN`), ``"deeplabv3"`` (:class:`DeepLabV3`), ``"deeplabv3plus"``
            (:class:`DeepLabV3Plus`) or ``"mask_rcnn"``
            (:class:`cnnkit.tasks.detection.mask_rcnn.MaskRCNN`, instance segmentation).
        num_classes: output channels, background included; for ``"mask_rcnn"`` the object classes without
            the background.
        backbone: registry name of the encoder (see :func:`cnnkit.list_models`); FCN and DeepLab default to
            ``"resnet50"``.
        **kwargs: options of the model class (e.g. ``in_chans``, ``depth``, ``skips``, ``output_stride``) and,
            for backbone models, of the backbone's builder.

    Returns:
        A model mapping ``(N, C, H, W)`` to logits ``(N, num_classes, H, W)``; for ``"mask_rcnn"`` a
        detector whose ``postprocess`` gives boxes, labels, scores and masks per image.

    Raises:
        ConfigError: unknown model name or option.
    """
    if name == "unet" and backbone is None:
        accepted = set(inspect.signature(UNet).parameters)
        for key in kwargs:
            if key not in accepted:
                raise ConfigError(f"unet got an unknown argument {key!r}{did_you_mean(key, accepted)}")
        return UNet(num_classes=num_classes, **kwargs)
    classes = {
        "unet": BackboneUNet,
        "fcn": FCN,
        "deeplabv3": DeepLabV3,
        "deeplabv3plus": DeepLabV3Plus,
        "mask_rcnn": MaskRCNN,
    }
    if name not in classes:
        raise ConfigError(
            f"unknown segmentation model {name!r}{did_you_mean(name, classes)}; choose one of {MODELS}"
        )
    return classes[name](backbone or "resnet50", num_classes=num_classes, **kwargs)
