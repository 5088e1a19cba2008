"""``optimize_for_inference``: folded BatchNorms, a flat graph, channels_last, inference mode, compile.

Each step removes work a CPU forward pass does not need: BatchNorm folding (:func:`cnnkit.export.fuse`)
removes one memory pass per folded norm; inference blocks (:mod:`cnnkit.export.blocks`) fold a ConvNeXt
block's LayerNorm affine and layer scale into its Linears and drop three passes per block; a flat
``torch.fx`` graph removes the Python calls of container modules and of the identities left by folding;
``torch.inference_mode`` skips autograd bookkeeping; ``channels_last`` lets oneDNN run dense convolutions without layout conversions; ``torch.compile``
(opt-in) generates fused kernels where the machine has a working compiler.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.fx
from torch import nn

from cnnkit.analysis.fuse import fuse
from cnnkit.engine.trainer import to_channels_last
from cnnkit.export.blocks import INFERENCE_FORMS, inference_blocks

INFERENCE_LEAVES = tuple(INFERENCE_FORMS.values())


def flatten_graph(model: nn.Module) -> nn.Module:
    """``model`` as one flat ``torch.fx.GraphModule`` without ``nn.Identity`` calls, if it traces.

    Args:
        model: a module whose ``forward`` takes and returns tensors.

    Returns:
        The graph module (same outputs, no container or identity module calls), or ``model`` itself
        when :func:`torch.fx.symbolic_trace` cannot trace it.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception:  # untraceable Python in forward: keep the module as it is
        return model
    graph_module = torch.fx.GraphModule(model, graph, model.__class__.__name__)
    for node in list(graph_module.graph.nodes):
        if (
            node.op == "call_module"
            and node.args
            and isinstance(graph_module.get_submodule(node.target), nn.Identity)
        ):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


class _Tracer(torch.fx.Tracer):
    """The default tracer, keeping the inference blocks of :mod:`cnnkit.export.blocks` as single calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, INFERENCE_LEAVES) or super().is_leaf_module(m, module_qualified_name)


class InferenceModel(nn.Module):
    """A model prepared for inference: calls it under ``torch.inference_mode`` in the chosen layout.

    Call it like the original model, without any context manager; the outputs are inference tensors
    (they cannot enter a later autograd graph; ``.clone()`` outside inference mode if that is needed).

    Args:
        model: the prepared module (fused, flattened, possibly compiled).
        channels_last: convert 4-d inputs to ``torch.channels_last`` before the call (the module's
            weights must already be in that layout).

    Shape:
        - Input: ``(N, C, H, W)``, any memory layout
        - Output: the wrapped model's output
    """

    def __init__(self, model: nn.Module, *, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.channels_last:
                x = to_channels_last(x)
            return self.model(x)


def measure_channels_last(module: nn.Module, example: torch.Tensor, rounds: int = 5, warmup: int = 2) -> bool:
    """Whether ``module`` runs ``example`` at least as fast in ``torch.channels_last`` as contiguous.

    Both layouts are timed in interleaved rounds after ``warmup`` calls each, under
    ``torch.inference_mode``; each layout's best round counts (the least disturbed by other load). One
    warm-up call was not enough: it chose channels_last for ConvNeXt-T at batch 8, where that layout runs
    0.87x eager against 1.09x contiguous (``benchmarks/inference.py``); with two, contiguous is chosen.

    Args:
        module: a module in eval mode, contiguous (it is not modified: a copy is converted).
        example: a representative input batch ``(N, C, H, W)``.
        rounds: timed calls per layout.
        warmup: untimed calls per layout before the timed rounds.

    Returns:
        ``True`` when the channels_last best time is not above the contiguous one.
    """
    candidates = {False: module, True: copy.deepcopy(module).to(memory_format=torch.channels_last)}
    inputs = {False: example.contiguous(), True: example.contiguous(memory_format=torch.channels_last)}
    best = best_call_times(
        {layout: functools.partial(candidate, inputs[layout]) for layout, candidate in candidates.items()},
        rounds,
        warmup,
    )
    return best[True] <= best[False]


def best_call_times(calls: dict[Any, Callable[[], Any]], rounds: int, warmup: int = 2) -> dict[Any, float]:
    """Best seconds of each call over interleaved rounds, under ``torch.inference_mode``.

    Every call runs ``warmup`` times untimed, then once per round, the calls taking turns so that a
    disturbance from other load hits them alike; each call's best round counts.

    Args:
        calls: zero-argument callables by name.
        rounds: timed calls of each.
        warmup: untimed calls of each first.

    Returns:
        The best time of each call, in seconds, by name.
    """
    best = dict.fromkeys(calls, float("inf"))
    with torch.inference_mode():
        for call in calls.values():
            for _ in range(warmup):
                call()
        for _ in range(rounds):
            for key, call in calls.items():
                start = time.perf_counter()
                call()
                best[key] = min(best[key], time.perf_counter() - start)
    return best


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool | Literal["auto"] = "auto",
    compile: bool = False,
    example_input: torch.Tensor | None = None,
) -> InferenceModel:
    """A fast, inference-only copy of ``model``: folded BatchNorms, flat graph, layout, inference mode.

    Steps: :func:`cnnkit.export.fuse` (a copy; ``model`` is unchanged), the faster inference forms of
    :func:`cnnkit.export.blocks.inference_blocks` (ConvNeXt blocks), :func:`flatten_graph`, weights
    to ``channels_last`` when chosen, then the :class:`InferenceModel` wrapper that runs every call
    under ``torch.inference_mode``. With ``compile=True`` the flat module goes through
    :func:`torch.compile`, which is tried on ``example_input`` at once; if compiling fails (no working
    compiler, an unsupported op) a warning says so and the uncompiled module is used.

    Usage::

        fast = optimize_for_inference(model.eval())
        logits = fast(images)          # no torch.no_grad / inference_mode needed around the call

    Args:
        model: a module in eval mode.
        channels_last: ``True`` runs in ``torch.channels_last`` (weights converted once, inputs at each
            call), ``False`` keeps the contiguous layout. ``"auto"`` (default) times both on
            ``example_input`` with :func:`measure_channels_last` and keeps the faster; without an example
            (no ``example_input``, no ``default_cfg``) it means ``True``. Neither layout won everywhere on
            the measured CPU (see ``docs/deploy.md``): channels_last usually, contiguous for some
            depthwise-heavy models at batch 1.
        compile: also apply :func:`torch.compile` (first call compiles: seconds to minutes).
        example_input: a representative input for the layout measurement and to try the compiled module
            on; default a random batch of one at ``model.default_cfg["input_size"]``.

    Returns:
        The :class:`InferenceModel`.

    Raises:
        ConfigError: ``model`` is in training mode.
        ValueError: ``compile=True`` without ``example_input`` for a model without ``default_cfg``.
    """
    prepared = flatten_graph(inference_blocks(fuse(model)))
    example = _example(model, example_input)
    if channels_last == "auto":
        channels_last = example is None or example.dim() != 4 or measure_channels_last(prepared, example)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    if compile:
        if example is None:
            raise ValueError("compile=True needs example_input for a model without default_cfg['input_size']")
        prepared = _compiled_or_eager(prepared, example, channels_last)
    return InferenceModel(prepared, channels_last=channels_last)


def _example(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor | None:
    if example_input is not None:
        return example_input
    cfg = getattr(model, "default_cfg", None)
    if not cfg or "input_size" not in cfg:
        return None
    return torch.randn(1, *cfg["input_size"], generator=torch.Generator().manual_seed(0))


def _compiled_or_eager(module: nn.Module, example: torch.Tensor, channels_last: bool) -> nn.Module:
    compiled = torch.compile(module)
    if channels_last and example.dim() == 4:
        example = example.contiguous(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            compiled(example)
    except Exception as err:  # the backend's failures have no common type (compiler missing, lowering, ...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(f"torch.compile failed, running uncompiled: {first_line}", RuntimeWarning, stacklevel=3)
        return module
    return compiled
