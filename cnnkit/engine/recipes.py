"""Shipped training recipes: tuned settings as YAML files in the ``cnnkit/recipes`` folder.

A recipe file holds a ``description``, what it ``measured`` (metric, value, target, minutes, machine) and its
``config`` (any :class:`~cnnkit.engine.config.TrainConfig` keys, ``pretrain`` and ``phases`` included, so a
multi-step recipe is one file). ``cnnkit train recipe=NAME [key=value ...]`` starts from it; a run that names
a recipe's model and data (``cnnkit train task=detection model=yolo data=mnist-det``) starts from that recipe
without naming it; ``recipe=none`` starts from the bare defaults. ``cnnkit recipes`` lists them.
"""

from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from cnnkit.errors import ConfigError, did_you_mean

RECIPE_DIR = pathlib.Path(__file__).resolve().parent.parent / "recipes"
"""The folder of the shipped recipe files (``<name>.yaml``)."""
NO_RECIPE = "none"
"""``recipe=none``: start from the bare defaults."""


@dataclass(frozen=True)
class Recipe:
    """A shipped recipe.

    Attributes:
        name: the file's stem, the ``recipe=`` value.
        description: what it trains and why its settings are what they are.
        config: its config keys (nested mappings, as in the file).
        measured: what it reached when last measured: ``metric``, ``value``, ``target``, ``minutes``,
            ``machine``, ``command``.
    """

    name: str
    description: str
    config: dict[str, Any]
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str | None:
        """The recipe's ``task``, if it names one."""
        return self.config.get("task")

    @property
    def model(self) -> str:
        """The recipe's ``model``."""
        return self.config["model"]

    @property
    def data(self) -> str:
        """The ``data=`` name the recipe trains on."""
        data = self.config.get("data", "mnist5k")
        return data["name"] if isinstance(data, dict) else data


@functools.cache
def _read(path: pathlib.Path) -> Recipe:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path.name}: not valid YAML ({str(err).splitlines()[0]})") from err
    if (
        not isinstance(loaded, dict)
        or not isinstance(loaded.get("config"), dict)
        or "model" not in loaded["config"]
    ):
        raise ConfigError(f"recipe {path.name}: expected `config:` with at least `model:`")
    return Recipe(
        path.stem, str(loaded.get("description", "")).strip(), loaded["config"], loaded.get("measured") or {}
    )


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, by name."""
    return [_read(path) for path in sorted(RECIPE_DIR.glob("*.yaml"))]


def get_recipe(name: str) -> Recipe:
    """The shipped recipe ``name``.

    Raises:
        ConfigError: no such recipe (with the closest names).
    """
    names = [recipe.name for recipe in list_recipes()]
    if name not in names:
        raise ConfigError(f"unknown recipe {name!r}{did_you_mean(name, names)}; shipped: {', '.join(names)}")
    return _read(RECIPE_DIR / f"{name}.yaml")


def recipe_for(config: Any) -> Recipe | None:
    """The recipe a config starts from: ``config.recipe`` when it names one, else the shipped recipe of the
    same model and data (the default model of the config's task when it names none), else ``None``.

    Raises:
        ConfigError: an unknown recipe name.
    """
    if config.recipe == NO_RECIPE:
        return None
    if config.recipe is not None:
        return get_recipe(config.recipe)
    from cnnkit.tasks.base import resolve_task

    _, model = resolve_task(config.task, config.model)
    for recipe in list_recipes():
        if recipe.model == model and recipe.data == config.data.name:
            return recipe
    return None
