"""Batched, per-sample random, target-aware augmentation: sample parameters, then apply them.

Every transform takes a batch ``(B, C, H, W)`` (uint8 or float, CPU or CUDA) with its targets and draws
independent parameters per sample::

    params = t.sample(images, generator)
    images, targets = t.apply(images, targets, params)   # or: images, targets = t(images, targets, generator)
    images = t(images, generator=generator)             # without targets a call returns the images alone

Boxes and masks move with geometric transforms; boxes that leave the image are dropped (see
:mod:`cnnkit.augment.base`).
"""

from cnnkit.augment.affine import RandomAffine
from cnnkit.augment.base import MIN_BOX_SIZE, Compose, RandomApply, Transform
from cnnkit.augment.color import ColorJitter, Normalize, adjust_hue
from cnnkit.augment.config import TRANSFORMS, build_transform, load_transform
from cnnkit.augment.erasing import Cutout, RandomErasing
from cnnkit.augment.geometric import (
    HorizontalFlip,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    Resize,
    crop_resize,
    warp,
)
from cnnkit.augment.mix import CutMix, MixUp
from cnnkit.augment.mosaic import Mosaic
from cnnkit.augment.policies import IMAGENET_POLICY, AutoAugment, RandAugment

__all__ = [
    "IMAGENET_POLICY",
    "MIN_BOX_SIZE",
    "TRANSFORMS",
    "AutoAugment",
    "ColorJitter",
    "Compose",
    "CutMix",
    "Cutout",
    "HorizontalFlip",
    "MixUp",
    "Mosaic",
    "Normalize",
    "RandAugment",
    "RandomAffine",
    "RandomApply",
    "RandomErasing",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomRotation",
    "Resize",
    "Transform",
    "adjust_hue",
    "build_transform",
    "crop_resize",
    "load_transform",
    "warp",
]
