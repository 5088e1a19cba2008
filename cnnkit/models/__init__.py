"""The model zoo: one file per family, one registry.

Importing this package registers every family's builders.
"""

from cnnkit.models.base import ClassifierModel, FeatureInfo
from cnnkit.models.registry import ModelCard, create_model, list_models, model_card, register_model

# isort: off
from cnnkit.models import lenet  # noqa: F401
from cnnkit.models import alexnet  # noqa: F401
from cnnkit.models import vgg  # noqa: F401
from cnnkit.models import resnet  # noqa: F401
from cnnkit.models import densenet  # noqa: F401
from cnnkit.models import efficientnet  # noqa: F401
from cnnkit.models import googlenet  # noqa: F401
from cnnkit.models import inception  # noqa: F401
from cnnkit.models import mobilenet  # noqa: F401
from cnnkit.models import convnext  # noqa: F401

__all__ = [
    "ClassifierModel",
    "FeatureInfo",
    "ModelCard",
    "create_model",
    "list_models",
    "model_card",
    "register_model",
]
