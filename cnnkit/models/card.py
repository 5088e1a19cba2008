"""The model card: what a registered model is, as data.

A leaf module (no torch, nothing else from cnnkit) so that the registry and the pretrained-weights loader
can both read cards without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelCard:
    """What a registered model is, as data.

    Attributes:
        name: registry name, e.g. ``"resnet50"``.
        family: module the builder lives in, e.g. ``"resnet"``.
        task: the task the model serves: ``"classification"``, ``"detection"``, ``"segmentation"`` or
            ``"instance_segmentation"``.
        params: parameter count with the default ``num_classes`` (shared parameters counted once); ``None``
            for task models whose size depends on their backbone.
        macs: multiply-accumulates of one forward pass at ``input_size`` (conv, linear, matmul); ``None``
            for task models whose size depends on their backbone.
        input_size: default ``(C, H, W)``.
        min_input_size: smallest ``(C, H, W)`` the network accepts.
        mean / std: per-channel normalization of the input.
        num_classes: default number of classes.
        paper: citation of the architecture.
        torchvision: name of the torchvision builder with the same ``state_dict`` layout, or ``None``.
        weights: torchvision weights enum class name (e.g. ``"ResNet50_Weights"``), or ``None``.
        first_conv: dotted name of the first convolution (adapted when ``in_chans`` differs).
        classifier: dotted name of the final classifier (replaced when ``num_classes`` differs).
    """

    name: str
    family: str
    task: str = "classification"
    params: int | None = None
    macs: int | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    min_input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    paper: str = ""
    torchvision: str | None = None
    weights: str | None = None
    first_conv: str = "conv1"
    classifier: str = "fc"
    extra: dict[str, Any] = field(default_factory=dict)
