"""cnnkit: convolutional networks from the formula on the page to a trained, measured, exported model.

The top-level names are loaded on first use, so that ``import cnnkit`` (and the ``cnnkit`` command) can
configure the process before torch is imported.
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
    "create_model": "cnnkit.models.registry",
    "list_models": "cnnkit.models.registry",
    "load_pretrained": "cnnkit.models.pretrained",
    "model_card": "cnnkit.models.registry",
}

__all__ = ["CnnkitError", "ConfigError", "DataError", "SpecError", "geometry", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
