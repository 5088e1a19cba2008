"""Build augmentation pipelines from data: ``[{"RandomResizedCrop": {"size": 224}}, "HorizontalFlip", ...]``.

A YAML file holds either that list or a mapping with the list under ``augment`` (other keys are ignored, so
a training config can carry its pipeline). Each entry is a transform class name, alone or mapped to its
keyword arguments; ``Compose`` and ``RandomApply`` take nested lists under ``transforms``.
"""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from cnnkit.augment.affine import RandomAffine
from cnnkit.augment.base import Compose, RandomApply, Transform
from cnnkit.augment.color import ColorJitter, Normalize
from cnnkit.augment.erasing import Cutout, RandomErasing
from cnnkit.augment.geometric import HorizontalFlip, RandomResizedCrop, RandomRotation, Resize
from cnnkit.augment.mix import CutMix, MixUp
from cnnkit.augment.mosaic import Mosaic
from cnnkit.augment.policies import AutoAugment, RandAugment
from cnnkit.errors import ConfigError, did_you_mean

TRANSFORMS: dict[str, type[Transform]] = {
    cls.__name__: cls
    for cls in (
        AutoAugment,
        ColorJitter,
        Compose,
        CutMix,
        Cutout,
        HorizontalFlip,
        MixUp,
        Mosaic,
        Normalize,
        RandAugment,
        RandomAffine,
        RandomApply,
        RandomErasing,
        RandomResizedCrop,
        RandomRotation,
        Resize,
    )
}
TRANSFORMS["RandomHorizontalFlip"] = HorizontalFlip


def build_transform(spec: Any, where: str = "augment") -> Transform:
    """A transform from its data form.

    Args:
        spec: a list of entries (composed), or one entry: a class name, or ``{name: {kwargs}}``.
        where: where ``spec`` came from, for error messages.

    Returns:
        The transform (a :class:`Compose` for a list).

    Raises:
        ConfigError: unknown name (with the closest names), bad keyword arguments, or a malformed entry.
    """
    if isinstance(spec, list):
        return Compose([build_transform(item, f"{where}[{i}]") for i, item in enumerate(spec)])
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict) and len(spec) == 1:
        name, kwargs = next(iter(spec.items()))
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}: arguments of {name} must be a mapping, got {kwargs!r}")
    else:
        raise ConfigError(f"{where}: expected a transform name or {{name: {{arguments}}}}, got {spec!r}")
    if name not in TRANSFORMS:
        raise ConfigError(f"{where}: unknown transform {name!r}{did_you_mean(name, TRANSFORMS)}")
    kwargs = dict(kwargs)
    if name in ("Compose", "RandomApply"):
        kwargs["transforms"] = build_transform(list(kwargs.get("transforms", [])), f"{where}.{name}")
        if name == "Compose":
            return kwargs["transforms"]
    try:
        return TRANSFORMS[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: bad arguments for {name}: {err}") from None


def load_transform(path: str | pathlib.Path) -> Transform:
    """Read a YAML pipeline file (see the module docs) and build it.

    Raises:
        ConfigError: missing or unparsable file, no pipeline in it, or a bad entry.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"augmentation config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if isinstance(data, dict):
        if "augment" not in data:
            raise ConfigError(f"{path}: expected a list of transforms or a mapping with an 'augment' list")
        data = data["augment"]
    if not isinstance(data, list):
        raise ConfigError(f"{path}: the pipeline must be a list of transforms, got {type(data).__name__}")
    return build_transform(data, str(path))
