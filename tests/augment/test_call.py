"""A call returns what it was given: ``t(images)`` the images, ``t(images, targets)`` the pair."""

from __future__ import annotations

import pytest
import torch

from cnnkit import augment
from cnnkit.augment import TRANSFORMS, Compose, Transform, build_transform

ARGS = {
    "Compose": {"transforms": [augment.RandomResizedCrop(24), augment.HorizontalFlip()]},
    "CutMix": {"num_classes": 4},
    "Cutout": {"size": 8},
    "MixUp": {"num_classes": 4},
    "Mosaic": {"num_classes": 4},
    "Normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
    "RandomAffine": {"degrees": 10},
    "RandomApply": {"transforms": [augment.ColorJitter(0.4, 0.4)], "p": 0.5},
    "RandomResizedCrop": {"size": 24},
    "RandomRotation": {"degrees": 15},
    "Resize": {"size": 24},
}


def every_transform() -> list[Transform]:
    return [cls(**ARGS.get(name, {})) for name, cls in sorted(TRANSFORMS.items())]


@pytest.fixture
def images(generator) -> torch.Tensor:
    return torch.randint(0, 256, (6, 3, 32, 40), dtype=torch.uint8, generator=generator)


def box_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[3.0, 4.0, 20.0, 25.0]]), "labels": torch.tensor([i % 4])} for i in range(6)
    ]


@pytest.mark.parametrize("transform", every_transform(), ids=lambda t: type(t).__name__)
def test_images_alone_give_images_alone_and_targets_give_the_pair(transform, images):
    alone = transform(images, generator=torch.Generator().manual_seed(5))
    assert isinstance(alone, torch.Tensor) and alone.shape[0] == 6

    out, labels = transform(images, torch.arange(6) % 4, generator=torch.Generator().manual_seed(5))
    assert isinstance(out, torch.Tensor) and isinstance(labels, torch.Tensor) and labels.shape[0] == 6
    assert torch.equal(out, alone)  # the same draws transform the images alike with or without targets

    pair = transform(images, box_targets(), torch.Generator().manual_seed(5))
    assert isinstance(pair, tuple) and len(pair) == 2
    assert torch.equal(pair[0], alone) and isinstance(pair[1], list) and len(pair[1]) == 6


def test_compose_returns_the_batch_like_torchvision(images):
    pipeline = Compose([augment.RandomResizedCrop(24), augment.HorizontalFlip(p=1.0)])
    out = pipeline(images, generator=torch.Generator().manual_seed(0))
    assert type(out) is torch.Tensor and out.shape == (6, 3, 24, 24) and out.dtype == torch.uint8
    params = pipeline.sample(images, torch.Generator().manual_seed(0))
    replayed, none = pipeline.apply(images, None, params)  # apply always returns the pair
    assert none is None and torch.equal(out, replayed)


def test_a_built_pipeline_with_targets_returns_the_pair(images):
    pipeline = build_transform([{"Resize": {"size": [16, 20]}}, "HorizontalFlip"])
    out, targets = pipeline(images, box_targets(), generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 16, 20)
    assert all(t["boxes"].shape == (1, 4) for t in targets)
    assert all(((t["boxes"] >= 0) & (t["boxes"] <= 20)).all() for t in targets)
