"""The top-level ``cnnkit`` namespace: subpackages and functions loaded on first use, torch left alone."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys
import types

import pytest

import cnnkit

SUBPACKAGES = (
    "analysis",
    "augment",
    "data",
    "engine",
    "export",
    "layers",
    "models",
    "reference",
    "tasks",
    "transfer",
)


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_is_an_attribute(name):
    module = getattr(cnnkit, name)
    assert isinstance(module, types.ModuleType)
    assert module is importlib.import_module(f"cnnkit.{name}")
    assert name in dir(cnnkit)


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cnnkit.nope  # noqa: B018


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_import_cnnkit_does_not_import_torch():
    code = "import sys, cnnkit; print('torch' in sys.modules, 'cnnkit.data' in sys.modules)"
    assert _run(code) == "False False"


def test_subpackage_imported_on_first_access():
    code = (
        "import sys, cnnkit; m = cnnkit.data; print(m is sys.modules['cnnkit.data'], 'torch' in sys.modules)"
    )
    assert _run(code) == "True True"


def _cnnkit_imports(module: str) -> set[str]:
    """The cnnkit modules a source file imports, anywhere in it (functions and TYPE_CHECKING blocks too)."""
    path = pathlib.Path(cnnkit.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "cnnkit" or n.startswith("cnnkit.")}


def test_model_card_is_a_leaf_and_pretrained_does_not_import_registry():
    assert _cnnkit_imports("cnnkit.models.card") == set()
    assert _cnnkit_imports("cnnkit.models.pretrained") == {"cnnkit.errors", "cnnkit.models.card"}


def test_model_card_defaults_and_reexport():
    from cnnkit.models.card import ModelCard
    from cnnkit.models.registry import ModelCard as RegistryCard

    card = ModelCard(name="unet", family="unet")
    assert RegistryCard is ModelCard
    assert (card.task, card.params, card.macs) == ("classification", None, None)
    assert cnnkit.model_card("lenet5").params == 61_706
