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
    metadata: dict[str, str] | None = None,
) -> pathlib.Path:
    """Write ``model`` (in eval mode) as an ONNX file traced on ``example_input``.

    Args:
        model: the module to export; its ``forward`` takes one tensor.
        path: the ``.onnx`` file to write.
        example_input: a sample input; its shape is fixed in the file except, with ``dynamic_batch``,
            the batch dimension.
        opset: ONNX operator set version.
        dynamic_batch: make dim 0 of the input and outputs symbolic (``batch``).
        metadata: texts stored in the file's ``metadata_props`` (what inference needs to use the file
            alone: :func:`cnnkit.engine.inference.export_metadata`); needs the ``onnx`` package.

    Returns:
        ``path``. The graph input is named ``input`` and the first output ``output`` (a model returning a
        list or tuple has one output per element, the others named by the exporter).

    Raises:
        ConfigError: an opset outside :data:`OPSET_RANGE`, the exporter rejected the model (its first
            message line is kept), or ``metadata`` without the ``onnx`` package.
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
    if metadata:
        _write_metadata(path, metadata)
    return path


def _write_metadata(path: pathlib.Path, metadata: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError as err:
        raise ConfigError(
            "writing ONNX metadata needs the onnx package: pip install 'cnnkit[export]' (onnx, onnxruntime)"
        ) from err
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def read_onnx_metadata(path: str | pathlib.Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (``{key: text}``), read with onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def check_exportable(card) -> None:
    """Refuse a model whose card says it cannot be exported (two-stage detectors: ``extra={"exportable":
    False}``).

    Raises:
        ConfigError: one line saying why and what to export instead.
    """
    if not card.extra.get("exportable", True):
        raise ConfigError(
            f"{card.name} cannot be exported: its proposal selection (top-k, NMS, RoI sampling) depends on "
            "the data; export a yolo or segmentation model, or run it in PyTorch"
        )


def export_run(
    run: str | pathlib.Path,
    path: str | pathlib.Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> float:
    """Export a ``cnnkit train`` run (its ``best`` checkpoint, else ``last``) as a self-describing ONNX file,
    and check it against PyTorch.

    The eval model is fused (:func:`cnnkit.export.fuse`), exported at the run's input size with the
    metadata :func:`cnnkit.engine.inference.export_metadata` (task, classes, input, post-processing options,
    config, version), run back with onnxruntime on standard-normal samples (batches 1 and 3 with a
    dynamic batch) and compared with the unfused model (:func:`check_export`).

    Args:
        run: a run directory or checkpoint.
        path: the ``.onnx`` file to write.
        opset: ONNX operator set version.
        dynamic_batch: symbolic batch dimension (what ``cnnkit predict`` batches need).

    Returns:
        The relative error (:func:`check_export`), to compare with :data:`RELATIVE_TOLERANCE`.

    Raises:
        ConfigError: a model that cannot be exported (:func:`check_exportable`), or one whose outputs are
            all zero on the sample. DataError: no checkpoint of ``cnnkit train`` there.
    """
    from cnnkit.analysis.fuse import fuse
    from cnnkit.engine.inference import export_metadata, load_run_model, output_structure
    from cnnkit.models.registry import model_card

    model, meta, config = load_run_model(run)
    check_exportable(model_card(config.model))
    size = (meta["input"]["channels"], meta["input"]["size"], meta["input"]["size"])
    generator = torch.Generator().manual_seed(0)
    samples = [torch.randn(n, *size, generator=generator) for n in ((1, 3) if dynamic_batch else (1,))]
    with torch.no_grad():
        structure = output_structure(model(samples[0]))
    metadata = export_metadata(meta, structure)
    export_onnx(fuse(model), path, samples[0], opset=opset, dynamic_batch=dynamic_batch, metadata=metadata)
    return check_export(path, model, samples)


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


RELATIVE_TOLERANCE = 1e-4
"""Largest relative error (:func:`check_export`) accepted between an exported file and PyTorch.

Measured: float32 ONNX files run by onnxruntime on the CPU, from randomly initialised zoo models fused as
``cnnkit export`` fuses them, on standard-normal samples at the card's input size, batches 1 and 3
(onnxruntime 1.32, torch 2.14, x86 CPU). Largest relative error per model, with three initialisation
seeds for the first four: resnet18 5.4e-7, mobilenet_v3_small 8.3e-7, efficientnet_b0 1.1e-6,
convnext_tiny 1.5e-6; one seed: lenet5 2.0e-7, alexnet 9.5e-7, vgg11_bn 2.5e-6, resnet50 5.5e-7,
densenet121 5.4e-7, mobilenet_v2 6.7e-7, mobilenet_v3_large 7.6e-7, googlenet 4.6e-7, inception_v3
8.3e-7, efficientnet_b1 9.4e-7. TorchScript files: at most 8.2e-7 on the first four. So 1e-4 leaves a
margin of 40x over the worst, while a file 1 % off anywhere (one weight tensor of mobilenet_v3_small
scaled by 1.01, on 96x96 samples, gives 9.8e-3) fails by 100x. The maxima of those outputs range from 4e-14
(efficientnet_b0) to 9e11 (inception_v3, whose absolute differences reach 6e5): no absolute tolerance
fits them all.
"""


def check_export(path: str | pathlib.Path, model: nn.Module, samples: Sequence[torch.Tensor]) -> float:
    """The relative error of an exported file against ``model``: its worst output over every sample.

    For every sample ``x`` and every output ``k`` of the model (one tensor, or each tensor of a tuple or
    list)::

        error(x, k) = max |exported_k(x) - model_k(x)| / max |model_k(x)|

    (maxima over all elements of the output), and the result is the largest ``error(x, k)``. An absolute
    difference means nothing without the outputs' scale: randomly initialised, mobilenet_v3_small's
    logits are about 2e-9 and efficientnet_b0's about 4e-14 on a standard-normal sample, so a file with
    wrong weights, whose outputs are just as small, is within any absolute 1e-4 of them. The vanishing
    comes from the weights, not the sample (scaling the sample by 100 raises those maxima by less than
    1000x, a ConvNeXt's not at all), so no better-conditioned sample fixes it; the relative error does not
    depend on the outputs' scale, and is about 1e-6 for those models as for a ResNet's outputs of about 5
    (see :data:`RELATIVE_TOLERANCE`). It only means nothing when the reference output is all zero, or so
    close to it that float rounding no longer has its relative precision: then the check refuses.

    Args:
        path: an exported file (see :func:`run_exported`).
        model: the PyTorch model it should compute, in eval mode.
        samples: inputs to compare on (e.g. batches of 1 and 3 for a dynamic batch).

    Returns:
        The largest relative error, to compare with :data:`RELATIVE_TOLERANCE`.

    Raises:
        ConfigError: an output of ``model`` on a sample has its largest magnitude below
            ``finfo.tiny / finfo.eps`` of its dtype (9.9e-32 in float32: within a factor ``1 / eps`` of the
            smallest normal float, so the smaller values computed on the way are subnormal and have lost
            relative precision), e.g. an output layer with zero weights and bias; the file's outputs have
            other shapes than the model's; or onnxruntime is missing for an ``.onnx`` file.

    Shape:
        - samples: each a batch the file accepts, e.g. ``(N, C, H, W)``
        - Output: a float
    """
    worst = 0.0
    for x in samples:
        with torch.no_grad():
            expected = _tensors(model(x))
        got = run_exported(path, x)
        if [t.shape for t in got] != [t.shape for t in expected]:
            raise ConfigError(
                f"{path}: output shapes {[tuple(t.shape) for t in got]} differ from PyTorch's "
                f"{[tuple(t.shape) for t in expected]} for an input of shape {tuple(x.shape)}"
            )
        for k, (g, e) in enumerate(zip(got, expected)):
            scale = e.abs().max().item() if e.numel() else 0.0
            finfo = torch.finfo(e.dtype) if e.is_floating_point() else torch.finfo(torch.float32)
            floor = finfo.tiny / finfo.eps
            if not scale >= floor:
                output = f"output {k}" if len(expected) > 1 else "output"
                raise ConfigError(
                    f"cannot check {path}: the PyTorch model's {output} is all zero (max |output| = "
                    f"{scale:.3g} < {floor:.2g}) on a sample of shape {tuple(x.shape)}, so any file would "
                    "match it; check the model's weights (e.g. a last layer of zeros)"
                )
            worst = max(worst, (g.to(e.dtype) - e).abs().max().item() / scale)
    return worst


CACHED_ONNX = "model.onnx"
"""The file :func:`onnx_for_run` keeps in a run directory."""


def onnx_for_run(run: str | pathlib.Path) -> pathlib.Path:
    """The run's self-describing ONNX file ``RUN/model.onnx`` (dynamic batch), exported by
    :func:`export_run` the first time and again whenever the run's checkpoint is newer than it.

    Raises:
        ConfigError: the model cannot be exported, or the file differs from PyTorch past
            :data:`RELATIVE_TOLERANCE` (it is then removed).
        DataError: no checkpoint of ``cnnkit train`` there.
    """
    from cnnkit.engine.inference import resolve_checkpoint

    checkpoint = resolve_checkpoint(run)
    path = checkpoint.parent / CACHED_ONNX
    if path.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime:
        return path
    partial = path.with_name(f".partial-{path.name}")  # an .onnx name: check_export runs it with onnxruntime
    error = export_run(checkpoint, partial)
    if not error <= RELATIVE_TOLERANCE:
        partial.unlink()
        raise ConfigError(
            f"{checkpoint}: its ONNX export differs from PyTorch (relative error {error:.3g} > "
            f"{RELATIVE_TOLERANCE:g}); predict with the PyTorch runtime"
        )
    partial.replace(path)  # two processes exporting at once leave one whole file
    return path


def _tensors(output: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [output] if isinstance(output, torch.Tensor) else list(output)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
