"""Optimizers and learning-rate schedules from config.

Weight decay is applied only to weights of convolutions and linear layers (see
:func:`cnnkit.transfer.decay_groups`). Parameter groups may carry an ``lr_scale`` (discriminative learning rates from
:func:`cnnkit.transfer.param_groups`); every schedule respects it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from cnnkit.errors import ConfigError
from cnnkit.transfer import decay_groups


def build_optimizer(
    model_or_groups: nn.Module | list[dict[str, Any]],
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over a model's trainable parameters, or over given parameter groups.

    Each group's learning rate is ``lr * group["lr_scale"]``.

    ``fused`` selects PyTorch's fused update, one multi-threaded kernel over all parameters instead of a
    loop of small tensor ops per parameter (``torch.optim.AdamW(..., fused=True)``, CPU and CUDA since
    PyTorch 2.4). ``None`` (default) uses it wherever the parameters' device has it and falls back to the
    per-tensor loop elsewhere. On 2 CPU cores the AdamW step alone is 4.5x faster for a ResNet-18 and 1.8x
    for a MobileNetV3 U-Net++ (SGD: 4.4x and 1.05x); a whole training step of that U-Net++ at 64x64, where
    the optimizer is a small share, 1.04x (``benchmarks/optimizer_step.py``). The arithmetic is the same;
    only rounding differs, visible on parameters whose gradient is rounding noise (a convolution's bias
    before BatchNorm), which Adam's normalisation amplifies.

    Raises:
        ConfigError: unknown optimizer name, or no trainable parameters.
    """
    if isinstance(model_or_groups, nn.Module):
        trainable = ((n, p) for n, p in model_or_groups.named_parameters() if p.requires_grad)
        groups = decay_groups(trainable, weight_decay)
    else:
        groups = model_or_groups
    if not groups:
        raise ConfigError("no trainable parameters: everything is frozen")
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    if name == "sgd":
        kind, options = torch.optim.SGD, {"momentum": momentum, "nesterov": momentum > 0}
    elif name == "adamw":
        kind, options = torch.optim.AdamW, {"betas": betas}
    else:
        raise ConfigError(f"unknown optimizer {name!r}: use sgd or adamw")
    if fused is not False:
        try:  # the constructor checks every parameter's device and dtype; copies keep `groups` unmarked
            return kind([dict(g) for g in groups], lr=lr, fused=True, **options)
        except RuntimeError:
            if fused:
                raise
    return kind(groups, lr=lr, **options)


def lr_factor(
    step: int,
    total_steps: int,
    name: str,
    warmup_steps: int = 0,
    pct_start: float = 0.25,
    min_lr_ratio: float = 0.0,
    step_size: int = 1,
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    - ``constant``: 1 after a linear warmup.
    - ``cosine``: linear warmup over ``warmup_steps``, then ``m + (1 - m) * (1 + cos(pi * t)) / 2`` with
      ``t`` the fraction of the remaining steps and ``m = min_lr_ratio`` (Loshchilov & Hutter, 2017).
    - ``onecycle``: cosine rise from ``1/25`` to 1 over the first ``pct_start`` of the run, then cosine
      decay to ``1/(25 * 1e4)`` (Smith & Topin, 2018; the defaults of ``torch.optim.lr_scheduler.OneCycleLR``).
    - ``step``: ``gamma ** (step // step_size)`` after warmup.
    """
    if name == "onecycle":
        rise = max(1, int(pct_start * total_steps))
        lo, hi, end = 1 / 25, 1.0, 1 / (25 * 1e4)
        if step < rise:
            return lo + (hi - lo) * (1 - math.cos(math.pi * step / rise)) / 2
        t = min(1.0, (step - rise) / max(1, total_steps - rise))
        return end + (hi - end) * (1 + math.cos(math.pi * t)) / 2
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    if name == "cosine":
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * t)) / 2
    if name == "step":
        return gamma ** ((step - warmup_steps) // max(1, step_size))
    raise ConfigError(f"unknown schedule {name!r}: use onecycle, cosine, step or constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, name: str = "onecycle", **kwargs: Any
) -> LRScheduler:
    """A per-optimizer-step :class:`LambdaLR` following :func:`lr_factor` (state_dict-resumable)."""
    lr_factor(0, total_steps, name, **kwargs)  # validate the name early
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, name, **kwargs))
