"""One registry of model builders, each with a model card: classifiers and task models alike.

A classifier's builder returns an ``nn.Module`` that speaks the feature contract of
:class:`cnnkit.models.base.ClassifierModel`; a task model's builder (``@register_model(task="detection",
...)``: detectors, segmenters) takes ``num_classes``, ``in_chans``, ``backbone`` and the backbone's
``weights``, and its card names the task that drives it (:mod:`cnnkit.tasks`, whose import registers the
built-in task models; ``cnnkit.create_model`` / ``cnnkit.list_models`` import it first). ``@register_model(...)`` records it with its card: the
numbers a user looks at before choosing a model (parameters, MACs at the default input size, input size,
normalization) and where it comes from (paper, weight-compatible torchvision builder). A test recomputes
every card's parameter and MAC counts with :func:`cnnkit.analyze`, so cards cannot drift from the code.
"""

from __future__ import annotations

import fnmatch
import inspect
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from cnnkit.errors import ConfigError, did_you_mean
from cnnkit.models.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelCard",
    "create_model",
    "list_models",
    "model_card",
    "register_model",
]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CARDS: dict[str, ModelCard] = {}


def register_model(**card: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder function under its own name, with its model card.

    Args:
        **card: the :class:`ModelCard` fields except ``name`` and ``family``, which come from the builder.

    Raises:
        ValueError: if a model of the same name is already registered.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered (by {_BUILDERS[name].__module__})")
        family = fn.__module__.rsplit(".", 1)[-1]
        _CARDS[name] = ModelCard(name=name, family=family, **card)
        _BUILDERS[name] = fn
        return fn

    return decorator


def _ensure_zoo_loaded() -> None:
    # Importing the families runs their @register_model decorators.
    import cnnkit.models  # noqa: F401


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Names of registered models matching a shell-style ``pattern``, in registration order.

    Args:
        pattern: shell-style pattern of the name.
        task: only the models whose card names this task (``"classification"``, ``"detection"``...).

    Example:
        >>> list_models("lenet*")
        ['lenet5', 'lenet5_classic']
    """
    _ensure_zoo_loaded()
    return [
        n for n in _BUILDERS if fnmatch.fnmatchcase(n, pattern) and (task is None or _CARDS[n].task == task)
    ]


def _lookup(name: str) -> str:
    _ensure_zoo_loaded()
    if name not in _BUILDERS:
        hint = "" if "cnnkit.tasks" in sys.modules else "; task models register when cnnkit.tasks is imported"
        raise ConfigError(
            f"unknown model {name!r}{did_you_mean(name, _BUILDERS)} (see `cnnkit models`){hint}"
        )
    return name


def model_card(name: str) -> ModelCard:
    """The :class:`ModelCard` of a registered model; an unknown name raises :class:`ConfigError`."""
    return _CARDS[_lookup(name)]


def _accepted_kwargs(builder: Callable[..., nn.Module]) -> set[str] | None:
    """Keyword names a builder accepts: its own, plus its model class's when it forwards ``**kwargs``."""
    sig = inspect.signature(builder, eval_str=True)
    names = {p.name for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return names
    cls = sig.return_annotation
    if not inspect.isclass(cls):
        return None
    for klass in cls.__mro__:
        if klass is nn.Module or "__init__" not in vars(klass):
            continue
        init = inspect.signature(klass.__init__)
        names |= {p.name for p in init.parameters.values() if p.name != "self" and p.kind.value < 4}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in init.parameters.values()):
            break
    return names


def model_options(name: str) -> set[str] | None:
    """Keyword options the builder of a registered model accepts (``None`` when it cannot be told).

    Raises:
        ConfigError: unknown model name.
    """
    return _accepted_kwargs(_BUILDERS[_lookup(name)])


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: registry name (see :func:`list_models`).
        pretrained: load torchvision's default published weights (downloaded once, cached).
        weights: a torchvision weights entry, e.g. ``"IMAGENET1K_V1"`` (implies ``pretrained``), or the path
            of a local ``.pth``/``.safetensors`` file (see :func:`cnnkit.models.pretrained.load_pretrained`).
        num_classes: classifier outputs; with pretrained weights a different value gets a new head.
        in_chans: input channels; with pretrained weights the first conv is adapted.
        features_only: return a :class:`cnnkit.models.features.FeatureListNet` that outputs stage maps.
        out_indices: stages to return with ``features_only`` (default: all).
        **kwargs: family-specific options (e.g. ``replace_stride_with_dilation``, ``drop_rate``).

    Returns:
        The model (``nn.Module``) with ``default_cfg`` set from its card.

    Raises:
        ConfigError: unknown model name (listing the closest names) or unknown keyword argument.
    """
    name = _lookup(name)
    builder, card = _BUILDERS[name], _CARDS[name]
    accepted = _accepted_kwargs(builder)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                raise ConfigError(f"{name} got an unknown argument {key!r}{did_you_mean(key, accepted)}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if card.task != "classification":
        if out_indices is not None:  # a task model's own option: the backbone stages it reads
            kwargs["out_indices"] = out_indices
        return _create_task_model(builder, card, pretrained, weights, features_only, kwargs)
    from cnnkit.models import pretrained as _pretrained

    if weights is None and pretrained:
        weights = "DEFAULT"
    local_file = weights is not None and _pretrained.is_weights_file(weights)
    published = weights is not None and not local_file
    if published:
        # Build with the published head and input, load, then adapt (new head, adapted first conv).
        kwargs.pop("num_classes", None)
        kwargs.pop("in_chans", None)
        kwargs = {**card.extra.get("pretrained_kwargs", {}), **kwargs}
    model = builder(**kwargs)
    model.default_cfg = {
        "architecture": name,
        "input_size": (in_chans or card.input_size[0], *card.input_size[1:]),
        "min_input_size": card.min_input_size,
        "mean": card.mean,
        "std": card.std,
        "num_classes": getattr(model, "num_classes", card.num_classes),
        "paper": card.paper,
        "torchvision": card.torchvision,
        "first_conv": card.first_conv,
        "classifier": card.classifier,
    }
    if local_file:
        _pretrained.load_pretrained(model, weights)
    elif published:
        _pretrained.load_torchvision_weights(model, card, weights, num_classes=num_classes, in_chans=in_chans)
    if features_only:
        from cnnkit.models.features import FeatureListNet

        return FeatureListNet(model, out_indices=out_indices)
    return model


def _create_task_model(
    builder: Callable[..., nn.Module],
    card: ModelCard,
    pretrained: bool,
    weights: str | None,
    features_only: bool,
    kwargs: dict[str, Any],
) -> nn.Module:
    """A task model: ``weights`` / ``pretrained`` are its backbone classifier's, passed to the builder."""
    if features_only:
        raise ConfigError(f"{card.name} is a {card.task} model; features_only is for classifiers (backbones)")
    if weights is None and pretrained:
        weights = "DEFAULT"
    if weights is not None:
        kwargs["weights"] = weights
    model = builder(**kwargs)
    model.default_cfg = {
        "architecture": card.name,
        "task": card.task,
        "input_size": (kwargs.get("in_chans", card.input_size[0]), *card.input_size[1:]),
        "min_input_size": card.min_input_size,
        "mean": card.mean,
        "std": card.std,
        "num_classes": getattr(model, "num_classes", card.num_classes),
        "paper": card.paper,
    }
    return model
