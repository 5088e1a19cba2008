"""Box regression as a distribution: the expected value of a discretised distance and the Distribution Focal
Loss (Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for Dense Object
Detection", NeurIPS 2020, Sec. 3.3).

A distance ``y`` (in units of the level's stride) is predicted as ``n`` logits over the values
``0, 1, ..., n - 1``; their softmax ``S`` is a general distribution, with no Dirac or Gaussian shape
assumed. The prediction is its expectation ``y_hat = sum_i i S_i`` (eq. 5). DFL pushes the probability onto
the two values around the target, ``y_i = floor(y) <= y <= y_i + 1 = y_{i+1}`` (eq. 6)::

    DFL(S_i, S_{i+1}) = -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})

whose minimum, ``S_i = y_{i+1} - y`` and ``S_{i+1} = y - y_i``, has expectation exactly ``y``.
"""

from __future__ import annotations

import torch


def distribution_expectation(logits: torch.Tensor) -> torch.Tensor:
    """The expected value ``sum_i i softmax(logits)_i`` of distributions over ``0 .. n - 1`` (GFL eq. 5).

    Shape:
        ``(..., n) -> (...)``.
    """
    values = torch.arange(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    return logits.softmax(-1) @ values


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution Focal Loss of logits over ``0 .. n - 1`` towards continuous targets (GFL eq. 6).

    ``-((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})`` with ``y_i = floor(y)``: two cross-entropies with
    the neighbouring values, weighted by the other's distance to ``y``.

    Args:
        logits: the distributions' logits.
        target: ``y``, clamped to ``[0, n - 1 - 0.01]`` so that ``y_{i+1}`` is a value of the distribution.

    Returns:
        The loss of each distribution (no reduction).

    Shape:
        ``(..., n), (...) -> (...)``.
    """
    n = logits.shape[-1]
    target = target.clamp(0, n - 1 - 0.01)
    left = target.floor().long()
    weight_left = left + 1 - target
    log_probs = logits.log_softmax(-1)
    log_left = log_probs.gather(-1, left[..., None])[..., 0]
    log_right = log_probs.gather(-1, (left + 1)[..., None])[..., 0]
    return -(weight_left * log_left + (1 - weight_left) * log_right)
