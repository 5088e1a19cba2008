"""Pipelines from YAML: names, arguments, nesting, and the errors a user sees."""

import pytest
import torch

from cnnkit.augment import (
    Compose,
    HorizontalFlip,
    RandomApply,
    RandomResizedCrop,
    build_transform,
    load_transform,
)
from cnnkit.errors import ConfigError


def test_build_nested_pipeline():
    t = build_transform(
        [
            {"RandomResizedCrop": {"size": 16, "scale": [0.5, 1.0]}},
            "RandomHorizontalFlip",
            {"RandomApply": {"transforms": [{"ColorJitter": {"brightness": 0.5}}], "p": 0.3}},
        ]
    )
    assert isinstance(t, Compose) and isinstance(t.transforms[0], RandomResizedCrop)
    assert t.transforms[0].scale == (0.5, 1.0) and isinstance(t.transforms[1], HorizontalFlip)
    assert isinstance(t.transforms[2], RandomApply) and t.transforms[2].p == 0.3
    y = t(torch.zeros(3, 3, 20, 20, dtype=torch.uint8), None, torch.Generator().manual_seed(0))
    assert y.shape == (3, 3, 16, 16)


def test_unknown_name_suggests_the_closest(tmp_path):
    path = tmp_path / "aug.yaml"
    path.write_text("augment:\n  - RandomResizedCrp: {size: 8}\n")
    with pytest.raises(ConfigError, match="did you mean 'RandomResizedCrop'"):
        load_transform(path)


def test_bad_arguments_and_files(tmp_path):
    with pytest.raises(ConfigError, match="bad arguments for HorizontalFlip"):
        build_transform({"HorizontalFlip": {"prob": 0.5}})
    with pytest.raises(ConfigError, match="not found"):
        load_transform(tmp_path / "missing.yaml")
    path = tmp_path / "scalar.yaml"
    path.write_text("3\n")
    with pytest.raises(ConfigError, match="must be a list"):
        load_transform(path)


def test_random_apply_refuses_size_changes():
    t = RandomApply([RandomResizedCrop(8)], p=0.5)
    with pytest.raises(ConfigError):
        t(torch.zeros(2, 3, 16, 16))


def test_random_apply_is_per_sample():
    t = RandomApply([HorizontalFlip(p=1.0)], p=0.5)
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(16, 3, 2, 4)
    params = t.sample(x, torch.Generator().manual_seed(0))
    y, _ = t.apply(x, None, params)
    flipped = y[:, 0, 0, 0] == 3
    assert torch.equal(flipped, params["apply"]) and 0 < int(flipped.sum()) < 16
