"""cnnkit: convolutional networks from the formula on the page to a trained, measured, exported model.

The top-level names and the subpackages (``cnnkit.data``, ``cnnkit.models``...) are loaded on first use, so
that ``import cnnkit`` (and the ``cnnkit`` command) can configure the process before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from cnnkit import geometry
from cnnkit.errors import CnnkitError, ConfigError, DataError, SpecError

__version__ = "0.1.0"

_LAZY = {
    "analyze": "cnnkit.analysis",
    "build": "cnnkit.models.spec",
    # the registry as seen from cnnkit.tasks, whose import also registers the detectors and segmenters
    "create_model": "cnnkit.tasks",
    "list_models": "cnnkit.tasks",
    "model_card": "cnnkit.tasks",
    "register_model": "cnnkit.tasks",
    "register_task": "cnnkit.tasks",
    "load_pretrained": "cnnkit.models.pretrained",
    # the Python twins of `cnnkit train`, `cnnkit predict` and `cnnkit eval`
    "train": "cnnkit.engine.run",
    "load": "cnnkit.engine.inference",
    "evaluate": "cnnkit.engine.inference",
}

# Subpackages reachable as ``cnnkit.<name>`` after a plain ``import cnnkit``, as in torch and timm. They stay
# out of ``__all__``: ``from cnnkit import *`` should not import torch.
_SUBMODULES = (
    "analysis",
    "augment",
    "data",
    "engine",
    "export",
    "layers",
    "models",
    "reference",
    "tasks",
    "transfer",
)

__all__ = ["CnnkitError", "ConfigError", "DataError", "SpecError", "geometry", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"cnnkit.{name}")
    else:
        raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
