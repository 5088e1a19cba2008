"""TorchScript and ONNX files from a model, and the check that a file computes what the model computes.

ONNX goes through ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter: the newer
``torch.export``-based exporter needs the ``onnxscript`` package, which cnnkit does not depend on. Exported
files are run back with ``onnxruntime`` (ONNX) or ``torch.jit.load`` (TorchScript).
"""

from __future__ import annotations

import contextlib
import pathlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from cnnkit.errors import ConfigError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_OPSET = 17
OPSET_RANGE = (7, 20)
"""Opsets the TorchScript-based ONNX exporter writes."""
INPUT_NAME, OUTPUT_NAME = "input", "output"

# Both export paths are deprecated in favour of torch.export-based tools that need extra packages;
# the files they write are what onnxruntime and libtorch load, so the notices are not the user's concern.
_DEPRECATION_NOTICES = (r".*legacy TorchScript-based ONNX export.*", r".*torch\.jit\..*deprecated.*")


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _DEPRECATION_NOTICES:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def export_onnx(
    model: nn.Module,
    path: str | pathlib.Path,
    example_input: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
) -> pathlib.Path:
    """Write ``model`` (in eval mode) as an ONNX file traced on ``example_input``.

    Args:
        model: the module to export; its ``forward`` takes one tensor.
        path: the ``.onnx`` file to write.
        example_input: a sample input; its shape is fixed in the file except, with ``dynamic_batch``,
            the batch dimension.
        opset: ONNX operator set version.
        dynamic_batch: make dim 0 of the input and outputs symbolic (``batch``).

    Returns:
        ``path``. The graph input is named ``input`` and the output ``output``.

    Raises:
        ConfigError: an opset outside :data:`OPSET_RANGE`, or the exporter rejected the model (its first
            message line is kept).
    """
    low, high = OPSET_RANGE
    if not low <= opset <= high:
        raise ConfigError(
            f"--opset must be between {low} and {high} for the TorchScript-based exporter, got {opset}"
        )
    path = pathlib.Path(path)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        with _quiet_deprecations():
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
            )
    except (RuntimeError, ValueError, torch.onnx.errors.OnnxExporterError) as err:
        raise ConfigError(f"ONNX export (opset {opset}) failed: {_first_line(err)}") from None
    return path


def export_torchscript(
    model: nn.Module, path: str | pathlib.Path, example_input: torch.Tensor
) -> pathlib.Path:
    """Write ``model`` (in eval mode) as a TorchScript file traced with :func:`torch.jit.trace`.

    Args:
        model: the module to export; its ``forward`` takes one tensor.
        path: the ``.pt`` file to write (load it with ``torch.jit.load``, in Python or libtorch).
        example_input: a sample input to trace on.

    Returns:
        ``path``.
    """
    path = pathlib.Path(path)
    with _quiet_deprecations(), torch.no_grad():
        torch.jit.trace(model, example_input).save(str(path))
    return path


def run_exported(path: str | pathlib.Path, x: torch.Tensor) -> list[torch.Tensor]:
    """Run an exported file on ``x``: ``.onnx`` with onnxruntime (CPU), anything else with ``torch.jit.load``.

    Returns:
        The outputs as a list of tensors (one per model output).
    """
    path = pathlib.Path(path)
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError as err:
            raise ConfigError(
                "checking an ONNX file needs onnxruntime: pip install 'cnnkit[export]' (onnx, onnxruntime)"
            ) from err
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(y) for y in session.run(None, {INPUT_NAME: x.numpy()})]
    with _quiet_deprecations(), torch.no_grad():
        return _tensors(torch.jit.load(str(path))(x))


def max_abs_diff(path: str | pathlib.Path, model: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """The largest absolute difference between an exported file and ``model`` over all ``inputs``.

    Args:
        path: an exported file (see :func:`run_exported`).
        model: the PyTorch model it should compute, in eval mode.
        inputs: sample inputs (e.g. batches of 1 and 3 for a dynamic batch).

    Returns:
        ``max |exported(x) - model(x)|`` over every input and every output element.
    """
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = _tensors(model(x))
        got = run_exported(path, x)
        if [t.shape for t in got] != [t.shape for t in expected]:
            raise ConfigError(
                f"{path}: output shapes {[tuple(t.shape) for t in got]} differ from PyTorch's "
                f"{[tuple(t.shape) for t in expected]} for an input of shape {tuple(x.shape)}"
            )
        worst = max([worst, *((g - e).abs().max().item() for g, e in zip(got, expected))])
    return worst


def _tensors(output: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [output] if isinstance(output, torch.Tensor) else list(output)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
