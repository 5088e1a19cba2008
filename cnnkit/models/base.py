"""The feature contract every classification model speaks.

Detection and segmentation heads use only this contract, so any backbone plugs into any head:

- ``forward_features(x)``: the last feature map ``(N, C, H/r, W/r)``, before pooling.
- ``forward_head(x, pre_logits=False)``: pooling, dropout and classifier; ``pre_logits`` stops before the
  classifier and returns the pooled features ``(N, C)``.
- ``forward_intermediates(x)``: the output map of every stage, a list in the order of ``feature_info``.
- ``reset_classifier(num_classes)``: a fresh classifier (``0`` gives an identity, for embeddings).
- ``feature_info``: a :class:`FeatureInfo`, one entry per stage with ``num_chs``, ``reduction``, ``module``.
- ``default_cfg``: input size, mean/std, source; set by :func:`cnnkit.create_model` from the model card.

Writing a family (one readable file per family, ``cnnkit/models/<family>.py``):

- Subclass :class:`ClassifierModel`; set ``num_classes``, ``num_features`` and ``feature_info`` (the maps
  at reductions 2/4/8/16/32 where the architecture has them); implement ``forward_intermediates``,
  ``forward_features`` (include a final conv/norm that torchvision keeps in ``features``),
  ``forward_head``; override ``reset_classifier`` and ``head_modules`` when the classifier is not a single
  ``nn.Linear`` at ``classifier_name`` (e.g. VGG's ``classifier.6``). ``forward`` must equal torchvision's
  in eval mode.
- Module and parameter names follow torchvision's builder of the same name, so that
  ``model.load_state_dict(tv_model.state_dict(), strict=True)`` works and parameter counts are equal.
  Reusable blocks live in ``cnnkit/layers`` and are exported from ``cnnkit.layers``.
- Builders are registered with ``@register_model(params=..., macs=..., input_size=(3, H, W),
  min_input_size=..., paper=..., torchvision="resnet50", weights="ResNet50_Weights", first_conv="conv1",
  classifier="fc")`` on a function named as the registry name, with the signature
  ``def resnet50(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet`` (the return
  annotation lets ``create_model`` reject unknown keyword arguments). ``macs`` is the exact integer that
  ``cnnkit.analyze(model, (1, *input_size)).macs`` reports (conv + linear multiply-accumulates; it agrees
  with torchvision's ``meta["_ops"]`` within 0.5%); ``tests/models/test_zoo.py`` checks every card.
- The family module is imported from ``cnnkit/models/__init__.py`` (``lenet`` first).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FeatureInfo(list):
    """One dict per stage: ``num_chs`` (channels), ``reduction`` (input size / map size), ``module``.

    Example:
        >>> info = FeatureInfo([dict(num_chs=64, reduction=4, module="layer1")])
        >>> info.channels(), info.reduction()
        ([64], [4])
    """

    def channels(self, indices: tuple[int, ...] | None = None) -> list[int]:
        """Channels of the selected stages (all by default)."""
        return [self[i]["num_chs"] for i in (indices if indices is not None else range(len(self)))]

    def reduction(self, indices: tuple[int, ...] | None = None) -> list[int]:
        """Spatial reduction (stride product) of the selected stages (all by default)."""
        return [self[i]["reduction"] for i in (indices if indices is not None else range(len(self)))]

    def module_names(self, indices: tuple[int, ...] | None = None) -> list[str]:
        """Dotted module names that produce the selected stages (all by default)."""
        return [self[i]["module"] for i in (indices if indices is not None else range(len(self)))]


class ClassifierModel(nn.Module):
    """Base class of the zoo's classifiers: implements ``forward`` and ``reset_classifier`` from the contract.

    Subclasses set ``self.num_classes``, ``self.num_features`` (channels entering the classifier) and
    ``self.feature_info``, and implement ``forward_intermediates``, ``forward_features`` and
    ``forward_head``. Subclasses whose classifier is not a single ``nn.Linear`` named by
    ``classifier_name`` (reading ``head_hidden_size`` or ``num_features`` inputs) override
    ``reset_classifier``.
    """

    classifier_name: str = "fc"
    num_classes: int
    num_features: int
    feature_info: FeatureInfo
    default_cfg: dict[str, Any]

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output map of every stage, in the order of ``feature_info``."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map, ``(N, num_features, H', W')``."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, then classify; ``pre_logits=True`` returns the pooled ``(N, num_features)`` features."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final classifier module."""
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs (0: identity).

        The new ``nn.Linear`` reads ``head_hidden_size`` features where the head has hidden layers (AlexNet,
        VGG, LeNet), else ``num_features``.
        """
        self.num_classes = num_classes
        width = getattr(self, "head_hidden_size", self.num_features)
        new = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        parent_name, _, child = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        old = getattr(parent, child)
        if isinstance(old, nn.Linear) and num_classes > 0:
            new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        setattr(parent, child, new)

    def head_modules(self) -> list[str]:
        """Dotted names of the modules used only by ``forward_head`` (dropped by ``features_only``)."""
        return [self.classifier_name]


class SequentialConvNet(ClassifierModel):
    """The AlexNet / VGG layout: a ``features`` stack, an adaptive ``avgpool`` and an MLP ``classifier``.

    Subclasses build ``features`` (``nn.Sequential``), ``avgpool``, ``classifier`` (hidden layers, then the
    last ``nn.Linear``) and ``_stage_ends``, the indices in ``features`` whose outputs are the stage maps.
    """

    classifier_name = "classifier.6"
    features: nn.Sequential
    avgpool: nn.Module
    classifier: nn.Sequential
    _stage_ends: frozenset[int]

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the layers in ``_stage_ends``, in the order of ``feature_info``."""
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._stage_ends:
                maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``features``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, flatten, the hidden linear layers; ``pre_logits=True`` stops before the last layer."""
        x = torch.flatten(self.avgpool(x), 1)
        *hidden, last = self.classifier
        for layer in hidden:
            x = layer(x)
        return x if pre_logits else last(x)

    def head_modules(self) -> list[str]:
        """The pooling and the whole classifier, unused by the stage maps."""
        return ["avgpool", "classifier"]
