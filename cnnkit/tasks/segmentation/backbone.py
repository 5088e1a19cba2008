"""Registered classifiers as segmentation encoders, through the feature contract.

A segmentation model keeps the classifier itself (its head replaced by identities, as
:class:`cnnkit.models.features.FeatureListNet` does) under the attribute ``backbone`` and calls its
``forward_intermediates``. Keeping the classifier rather than the wrapper gives parameter names
``backbone.conv1.weight``, ``backbone.layer4...``: the names of torchvision's segmentation models, whose
``backbone`` holds the ResNet's modules directly.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.models.base import FeatureInfo
from cnnkit.models.registry import create_model as create_classifier


def build_backbone(name: str, in_chans: int = 3, **kwargs: Any) -> tuple[nn.Module, FeatureInfo]:
    """A registered classifier without its head, and the ``feature_info`` of all its stages.

    Args:
        name: registry name of the classifier (see :func:`cnnkit.list_models`).
        in_chans: input image channels.
        **kwargs: options of the classifier's builder (e.g. ``replace_stride_with_dilation``, ``weights``).

    Returns:
        ``(model, feature_info)``; ``model.forward_intermediates(x)`` returns one map per ``feature_info``
        entry.

    Raises:
        ConfigError: unknown backbone name or option.
    """
    features = create_classifier(name, in_chans=in_chans, features_only=True, **kwargs)
    return features.model, features.feature_info


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the bottom and right of ``x`` so that height and width are multiples of ``multiple``.

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: ``(N, C, ceil(H / m) * m, ceil(W / m) * m)``; crop the result back with ``[..., :H, :W]``.

    ``F.pad`` is called even with zero amounts, so that no branch depends on the input size and
    ``torch.fx`` traces the models that use it for any input size.
    """
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple))
