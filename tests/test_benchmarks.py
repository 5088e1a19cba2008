"""Every script in benchmarks/ imports against the package as it is and answers ``--help``.

The benchmarks run by hand, not in the test suite, so a renamed import would otherwise go unnoticed until
someone needs the figure (two of them imported ``load_run_model`` from a module it had left)."""

import importlib.util
import pathlib
import sys

import pytest

BENCHMARKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_imports_and_answers_help(path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    spec.loader.exec_module(module)
    assert module.__doc__, f"{path.name} has no docstring saying what it measures"
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out
