"""Pretrained weights: torchvision's published checkpoints, or a local file.

Two ways in:

- ``create_model(name, pretrained=True)`` / ``weights="IMAGENET1K_V1"``: torchvision's own weights API
  downloads the checkpoint once, verifies its hash and caches it (``$TORCH_HOME/hub/checkpoints``). With no
  network this fails with a one-line :class:`~cnnkit.errors.ConfigError` that says how to use a local file.
- ``load_pretrained(model, path)`` or ``create_model(name, weights="path/to/file.pth")``: a torchvision
  ``.pth`` (read with ``torch.load(weights_only=True)``, never unsafe unpickling) or a ``.safetensors`` file.

Either way the checkpoint is adapted to the model: a classifier of a different size keeps the model's fresh
initialisation, and a first convolution with a different number of input channels gets the pretrained
filters summed (1 channel) or tiled and rescaled (other counts), as timm does.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Mapping

import torch
from torch import nn

from cnnkit.errors import ConfigError, DataError, did_you_mean
from cnnkit.models.card import ModelCard

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

# Older torchvision DenseNet checkpoints name layers "norm.1" where the modules are "norm1".
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def is_weights_file(weights: str) -> bool:
    """Whether a ``weights`` argument names a local file (by suffix or existence) rather than an entry."""
    return weights.endswith(_WEIGHT_SUFFIXES) or pathlib.Path(weights).is_file()


def read_state_dict(path: str | pathlib.Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a ``.safetensors`` file or a torch checkpoint, safely.

    Torch checkpoints are read with ``torch.load(weights_only=True)``; a checkpoint that holds anything but
    tensors and plain containers is refused. A checkpoint wrapping its weights in ``{"state_dict": ...}`` or
    ``{"model": ...}`` is unwrapped.

    Raises:
        DataError: missing, unreadable or unsafe file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors, truncated files, bad headers
        raise DataError(
            f"cannot read weights from {path}: {type(err).__name__}: {err}".splitlines()[0]
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt first-conv filters ``(C_out, C_src, k, k)`` to ``in_chans`` input channels.

    One channel gets the sum over the source channels (a grey image equals the same grey in every RGB
    channel, so responses are preserved exactly); other counts tile the source channels and rescale by
    ``C_src / in_chans``, which keeps the response to a constant image exactly when ``in_chans`` is a
    multiple of ``C_src`` and in expectation over the filters otherwise (timm's rule).

    Shape:
        - Input: ``(C_out, C_src, k_h, k_w)``
        - Output: ``(C_out, in_chans, k_h, k_w)``
    """
    c_src = weight.shape[1]
    if in_chans == c_src:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / c_src)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (c_src / in_chans)


def _module_cfg(model: nn.Module) -> tuple[str | None, tuple[str, ...]]:
    """The first conv's name and the prefixes of head parameters (classifier and auxiliary heads)."""
    cfg = getattr(model, "default_cfg", None) or {}
    heads = [cfg.get("classifier") or getattr(model, "classifier_name", None)]
    if hasattr(model, "head_modules"):
        heads += model.head_modules()
    return cfg.get("first_conv"), tuple(f"{h}." for h in heads if h)


def load_pretrained(
    model: nn.Module,
    path_or_state: str | pathlib.Path | Mapping[str, torch.Tensor],
    *,
    source: str | None = None,
) -> nn.Module:
    """Load pretrained weights into ``model``, adapting its classifier and first conv when they differ.

    Args:
        model: a model from :func:`cnnkit.create_model` (its ``default_cfg`` names the first conv and the
            classifier) or any module with the same parameter names as the checkpoint.
        path_or_state: a ``.pth``/``.pt`` torch checkpoint, a ``.safetensors`` file, or a state_dict.
        source: what errors call the weights (default: the path, or ``"state_dict"``), e.g. the file a
            state_dict was already read from.

    Returns:
        The same model, with weights loaded (in place).

    Raises:
        DataError: the file is missing or unreadable.
        ConfigError: the checkpoint does not fit: lists missing and unexpected keys and shape mismatches.
    """
    if isinstance(path_or_state, Mapping):
        state = dict(path_or_state)
        source = source or "state_dict"
    else:
        state = read_state_dict(path_or_state)
        source = source or str(path_or_state)
    own = model.state_dict()
    first_conv, head_prefixes = _module_cfg(model)
    conv_key = f"{first_conv}.weight" if first_conv else None
    if conv_key in state and conv_key in own and state[conv_key].shape[1] != own[conv_key].shape[1]:
        state[conv_key] = adapt_input_conv(state[conv_key], own[conv_key].shape[1])
    mismatched = []
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            if head_prefixes and key.startswith(head_prefixes):
                state[key] = own[key]  # a head for another number of classes: keep the fresh one
            else:
                mismatched.append(
                    f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
                )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise ConfigError(f"weights in {source} do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def _weights_entry(card: ModelCard, name: str):
    """The torchvision weights enum member for a card and an entry name (``DEFAULT``, ``IMAGENET1K_V1``...)."""
    if card.torchvision is None or card.weights is None:
        raise ConfigError(
            f"{card.name} has no published torchvision weights; pass a local file as weights=PATH"
        )
    from torchvision.models import get_model_weights

    enum = get_model_weights(card.torchvision)
    members = list(enum.__members__)
    key = name.split(".")[-1]
    if key not in enum.__members__:
        raise ConfigError(
            f"{card.name} has no weights {name!r}{did_you_mean(key, members)} (available: {', '.join(members)})"
        )
    return enum[key]


def load_torchvision_weights(
    model: nn.Module,
    card: ModelCard,
    weights: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
) -> nn.Module:
    """Load published weights into a model built with the card's default head and input channels.

    ``weights`` is a torchvision entry name (``"DEFAULT"``, ``"IMAGENET1K_V1"``). After loading, the
    classifier is replaced when ``num_classes`` differs and the first conv is adapted when ``in_chans``
    differs.

    Raises:
        ConfigError: unknown entry, or the download failed (the message says how to use a local file).
    """
    entry = _weights_entry(card, weights)
    try:
        state = entry.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # no network, HTTP errors, hash mismatch
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"could not fetch {entry} ({reason}); download {entry.url} on a machine with network and pass "
            f"the file: create_model({card.name!r}, weights='PATH') or cnnkit.load_pretrained(model, 'PATH')"
        ) from err
    load_pretrained(model, {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()})
    if num_classes is not None and num_classes != getattr(model, "num_classes", card.num_classes):
        model.reset_classifier(num_classes)
        model.default_cfg["num_classes"] = num_classes
    if in_chans is not None and in_chans != card.input_size[0]:
        _replace_first_conv(model, card.first_conv, in_chans)
    return model


def _replace_first_conv(model: nn.Module, name: str, in_chans: int) -> None:
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"cannot adapt {name} ({type(conv).__name__}) to in_chans={in_chans}")
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(conv.weight, in_chans))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
