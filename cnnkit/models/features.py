"""``features_only`` models: a backbone that returns the maps of selected stages."""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.models.base import ClassifierModel, FeatureInfo


class FeatureListNet(nn.Module):
    """Wraps a :class:`ClassifierModel` so that ``forward`` returns the stage maps chosen by ``out_indices``.

    The classifier modules are removed, so every parameter left is used by the forward pass (as DDP and
    the detection/segmentation heads need).

    Args:
        model: a model speaking the feature contract.
        out_indices: indices into ``model.feature_info`` (negative allowed); default all stages.

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: list of ``(N, feature_info[i]["num_chs"], H / reduction_i, W / reduction_i)``
          (sizes rounded up for odd inputs, as the convolutions round).
    """

    def __init__(self, model: ClassifierModel, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        n = len(model.feature_info)
        indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
        for i in indices:
            if not -n <= i < n:
                raise ConfigError(
                    f"out_indices {indices} out of range for a model with {n} stages (0..{n - 1})"
                )
        self.out_indices = tuple(i % n for i in indices)
        for name in model.head_modules():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nn.Identity())
        self.model = model
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)
        self.default_cfg = getattr(model, "default_cfg", {})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Selected stage maps, in the order of ``out_indices``."""
        maps = self.model.forward_intermediates(x)
        return [maps[i] for i in self.out_indices]
