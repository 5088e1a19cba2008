"""Regularization layers."""

from __future__ import annotations

import torch
from torch import nn


class StochasticDepth(nn.Module):
    """Drop a residual branch at random during training (Huang et al., 2016, arXiv:1603.09382).

    ``mode="row"`` zeroes the whole branch for each sample independently with probability ``p``;
    ``mode="batch"`` drops it for the whole batch. Survivors are scaled by ``1 / (1 - p)`` so the
    expectation is unchanged; in eval mode (or ``p = 0``) the layer is the identity.

    Args:
        p: drop probability in ``[0, 1]``.
        mode: ``"row"`` or ``"batch"``.

    Shape:
        - Input: ``(N, ...)``
        - Output: same as input.
    """

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability must be in [0, 1], got {p}")
        if mode not in ("row", "batch"):
            raise ValueError(f"mode must be 'row' or 'batch', got {mode!r}")
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.mode == "row" else (1,) * x.ndim
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            keep.div_(survival)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"
