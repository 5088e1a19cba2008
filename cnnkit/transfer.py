"""Transfer learning: freeze and unfreeze by stage, BatchNorm policy, progressive unfreezing, per-stage LRs.

The reference page's three strategies are named options of :func:`apply_strategy`:

=================== ============================================= ===========================
strategy            what trains                                   when
=================== ============================================= ===========================
``feature_extractor`` the new head only (backbone frozen)         small dataset, similar domain
``fine_tune``       the head and the chosen top stages, small LR  moderate dataset
``full``            everything                                    large dataset
=================== ============================================= ===========================

Stages come from the feature contract: each ``feature_info`` module in input-to-output order (a stage owns
everything computed up to its output map, so the stem belongs to the first), then ``"head"``
(``model.head_modules()``). A task model (detector, segmenter) has no head of its own in this sense: its
stages are those of the classifier inside its ``backbone`` (:func:`stage_owner`), and everything outside
that classifier (neck, decoder, heads) is its head. A frozen
stage's parameters stop requiring gradients and its BatchNorm layers stay in eval mode, so their running
statistics do not move while the rest of the model trains (``freeze_bn=True``). Progressive unfreezing is
the trainer callback :class:`cnnkit.engine.callbacks.ProgressiveUnfreezing`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from cnnkit.errors import ConfigError, did_you_mean

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@functools.cache
def _frozen_bn_class(cls: type) -> type:
    """A subclass of a BatchNorm class whose ``train()`` keeps it in eval mode (same state_dict)."""

    def train(self, mode: bool = True):
        return nn.Module.train(self, False)

    return type(f"Frozen{cls.__name__}", (cls,), {"train": train, "_cnnkit_frozen_from": cls})


_BACKBONE_PATH = ("backbone", "body", "model")
"""Attributes followed from a task model to its classifier: ``model.backbone`` (segmenters), then
``.body`` (the FPN wrapper of two-stage detectors) and ``.model`` (a ``features_only`` wrapper)."""


def stage_owner(model: nn.Module) -> nn.Module:
    """The classifier whose stages transfer learning freezes: ``model`` itself (a DDP wrapper's ``module``)
    when it has ``head_modules()``, else the classifier found through its ``backbone`` / ``body`` / ``model``.

    Raises:
        ConfigError: no such classifier (e.g. the classic U-Net, which has no backbone).
    """
    owner = getattr(model, "module", model)
    while not hasattr(owner, "head_modules"):
        inner = next(
            (getattr(owner, a) for a in _BACKBONE_PATH if isinstance(getattr(owner, a, None), nn.Module)),
            None,
        )
        if inner is None:
            raise ConfigError(
                f"{type(model).__name__} has no backbone classifier whose stages could be frozen; "
                "train it with transfer.strategy=full"
            )
        owner = inner
    return owner


def stage_names(model: nn.Module) -> list[str]:
    """``[<feature_info modules>..., "head"]`` in input-to-output order."""
    model = stage_owner(model)
    return [*[info["module"] for info in model.feature_info], "head"]


def stage_modules(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names of each stage.

    A parameter under a head module belongs to ``head``; under a stage's module, to that stage. Any other
    parameter (the stem, glue between stages such as a final 1x1 conv) belongs to the first stage whose
    module is registered after its own, or to the last stage when none is: a stage is everything computed
    up to its output map, so the stem belongs to the first stage.
    """
    model = stage_owner(model)
    names = stage_names(model)
    feature_stages = names[:-1]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    head = tuple(h + "." for h in model.head_modules())
    groups: dict[str, list[str]] = {name: [] for name in names}
    for pname, _ in model.named_parameters():
        owner = pname.rpartition(".")[0]
        if pname.startswith(head):
            groups["head"].append(pname)
            continue
        inside = [s for s in feature_stages if pname.startswith(s + ".")]
        if inside:
            groups[inside[0]].append(pname)
            continue
        later = [s for s in feature_stages if order.get(s, -1) > order.get(owner, -1)]
        groups[later[0] if later else feature_stages[-1]].append(pname)
    return groups


def _check_stages(model: nn.Module, stages: Sequence[str]) -> None:
    valid = stage_names(model)
    for stage in stages:
        if stage not in valid:
            raise ConfigError(
                f"unknown stage {stage!r}{did_you_mean(stage, valid)}; stages: {', '.join(valid)}"
            )


def _set_trainable(model: nn.Module, stages: Sequence[str], trainable: bool, freeze_bn: bool = True) -> None:
    model = stage_owner(model)
    _check_stages(model, stages)
    groups = stage_modules(model)
    params = dict(model.named_parameters())
    selected = {p for s in stages for p in groups[s]}
    for name in selected:
        params[name].requires_grad_(trainable)
    _set_bn_trainable(model, selected, trainable, freeze_bn)


def _set_bn_trainable(model: nn.Module, selected: set[str], trainable: bool, freeze_bn: bool) -> None:
    """Swap the BatchNorm layers whose ``weight`` is in ``selected`` to (or back from) frozen eval mode."""
    for mname, module in model.named_modules():
        if not isinstance(module, _BN_TYPES) or not module.affine:
            continue
        if f"{mname}.weight" not in selected:
            continue
        if not trainable and freeze_bn:
            module.__class__ = _frozen_bn_class(type(module))
            module.eval()
        elif trainable and hasattr(type(module), "_cnnkit_frozen_from"):
            module.__class__ = type(module)._cnnkit_frozen_from
            module.train(model.training)


def set_trainable(module: nn.Module, trainable: bool, freeze_bn: bool = True) -> None:
    """Freeze (or unfreeze) every parameter of ``module``, e.g. a detector's backbone; frozen BatchNorm
    layers stay in eval mode (running statistics fixed) when ``freeze_bn``."""
    names = {name for name, _ in module.named_parameters()}
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)
    _set_bn_trainable(module, names, trainable, freeze_bn)


def freeze(model: nn.Module, until: str | None = None, freeze_bn: bool = True) -> list[str]:
    """Freeze the stages from the input up to and including ``until`` (default: every stage but the head).

    Returns:
        The frozen stage names.
    """
    names = stage_names(model)
    if until is not None:
        _check_stages(model, [until])
    last = names.index(until) if until is not None else len(names) - 2
    frozen = names[: last + 1]
    _set_trainable(model, frozen, False, freeze_bn)
    return frozen


def unfreeze(model: nn.Module, stages: Sequence[str] | None = None) -> None:
    """Make the named stages (default: every stage) trainable again, BatchNorm included."""
    _set_trainable(model, stages if stages is not None else stage_names(model), True)


def frozen_stages(model: nn.Module) -> list[str]:
    """Stages whose parameters are all frozen."""
    params = dict(stage_owner(model).named_parameters())
    return [
        s
        for s, names in stage_modules(model).items()
        if names and not any(params[n].requires_grad for n in names)
    ]


def apply_strategy(
    model: nn.Module, strategy: str, unfreeze: Sequence[str] = (), freeze_bn: bool = True
) -> None:
    """Apply one of the page's strategies: ``full``, ``feature_extractor`` or ``fine_tune``.

    ``fine_tune`` trains the head and the stages in ``unfreeze`` (default: the last feature stage).

    Raises:
        ConfigError: unknown strategy or stage name.
    """
    if strategy == "full":
        return
    if strategy not in ("feature_extractor", "fine_tune"):
        raise ConfigError(f"unknown transfer strategy {strategy!r}: use full, feature_extractor or fine_tune")
    freeze(model, freeze_bn=freeze_bn)
    if strategy == "fine_tune":
        chosen = list(unfreeze) or [stage_names(model)[-2]]
        _set_trainable(model, chosen, True)


def decay_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float, lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Split parameters into a decayed group (``ndim > 1``: conv and linear weights) and one without decay
    (norm scales and shifts, biases, layer scales), as is standard since He et al., "Bag of Tricks", 2019."""
    decay, no_decay = [], []
    for _, p in named_params:
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale},
    ]
    return [g for g in groups if g["params"]]


def param_groups(
    model: nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0, stage_decay: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer groups with discriminative learning rates (Howard & Ruder, 2018).

    The head gets ``lr_scale = 1``; backbone stage ``k`` counted from the top (``k = 0`` for the last
    feature stage) gets ``backbone_lr_scale * stage_decay ** k``. Frozen parameters are included (they get
    no gradient, so they do not move) so that progressive unfreezing can train them later. Within each
    stage, weights decay and norm/bias parameters do not (see :func:`cnnkit.engine.optim.decay_groups`).
    """
    model = stage_owner(model)
    params = dict(model.named_parameters())
    stages = stage_modules(model)
    backbone = [s for s in stage_names(model)[:-1] if stages[s]][::-1]
    groups = decay_groups(((n, params[n]) for n in stages["head"]), weight_decay, 1.0)
    for k, stage in enumerate(backbone):
        scale = backbone_lr_scale * stage_decay**k
        groups += decay_groups(((n, params[n]) for n in stages[stage]), weight_decay, scale)
    return groups
