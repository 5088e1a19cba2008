"""cnnkit: convolutional networks from the formula on the page to a trained, measured, exported model."""

from cnnkit import geometry
from cnnkit.analysis import analyze
from cnnkit.errors import CnnkitError, ConfigError, DataError, SpecError
from cnnkit.models.pretrained import load_pretrained
from cnnkit.models.registry import create_model, list_models, model_card
from cnnkit.models.spec import build

__version__ = "0.1.0"

__all__ = [
    "CnnkitError",
    "ConfigError",
    "DataError",
    "SpecError",
    "analyze",
    "build",
    "create_model",
    "geometry",
    "list_models",
    "load_pretrained",
    "model_card",
]
