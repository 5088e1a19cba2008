"""Conv-BatchNorm folding found on the ``torch.fx`` graph.

In eval mode a BatchNorm is an affine map per channel with frozen statistics, so when it directly follows
a convolution (or a linear layer) whose output nothing else reads, it can be folded into that layer's
weights and replaced by an identity. The pairs are found on the traced graph, never by module names: a
BatchNorm call whose single input is the call of a ``Conv1d``/``Conv2d``/``Conv3d``/``Linear`` module used
only by it. A network (or part of one) that cannot be traced is searched child by child.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from cnnkit.errors import ConfigError

FOLDABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layer types a following BatchNorm folds into (their weight's dim 0 is the output channel)."""


@dataclass(frozen=True)
class FoldPair:
    """A layer and the BatchNorm that folds into it, as dotted module paths from the root module."""

    layer: str
    batchnorm: str


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of a conv/linear layer with the eval-mode BatchNorm that follows it folded in.

    With ``s = gamma / sqrt(running_var + eps)`` per output channel (``gamma = 1``, ``beta = 0`` when the
    BatchNorm is not affine)::

        W' = W * s                      (s broadcast over all but the output-channel dim 0)
        b' = (b - running_mean) * s + beta     (b = 0 for a layer without bias)

    because ``BN(W x + b) = s * (W x + b - mean) + beta`` (Ioffe & Szegedy, 2015, eq. in Alg. 2 with the
    population statistics of inference). The per-channel ``s`` and ``b'`` are computed in float64 and cast
    to the weight's dtype; ``W'`` is one multiplication in that dtype.

    Args:
        weight: layer weight, output channels first (``Conv*d``: ``(C_out, C_in/groups, *k)``; ``Linear``:
            ``(C_out, C_in)``).
        bias: layer bias ``(C_out,)`` or ``None``.
        bn: the BatchNorm, with running statistics.

    Returns:
        ``(W', b')`` with the dtype of ``weight``.

    Shape:
        - weight: ``(C_out, ...)``; bias: ``(C_out,)``
        - Output: same shapes as ``weight`` and ``(C_out,)``
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    f64 = torch.float64
    scale = torch.rsqrt(bn.running_var.to(f64) + bn.eps)
    shift = torch.zeros_like(scale)
    if bn.affine:
        scale = scale * bn.weight.detach().to(f64)
        shift = bn.bias.detach().to(f64)
    b = bias.detach().to(f64) if bias is not None else torch.zeros_like(scale)
    new_weight = weight.detach() * scale.to(weight.dtype).reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (b - bn.running_mean.to(f64)) * scale + shift
    return new_weight, new_bias.to(weight.dtype)


def _traced_graphs(module: nn.Module, prefix: str) -> list[tuple[str, torch.fx.Graph]]:
    """Graphs of ``module`` (one if it traces), else of its children, recursively; with their path."""
    try:
        return [(prefix, torch.fx.symbolic_trace(module).graph)]
    except Exception:  # tracing runs arbitrary Python (data-dependent branches, len() of a proxy, ...)
        graphs = []
        for name, child in module.named_children():
            graphs.extend(_traced_graphs(child, f"{prefix}{name}."))
        return graphs


def find_fold_pairs(model: nn.Module) -> list[FoldPair]:
    """Every (layer, BatchNorm) pair of ``model`` that :func:`fuse` folds, in graph order.

    A pair is a BatchNorm call whose only input is the call of a conv/linear module (see
    :data:`FOLDABLE_LAYERS`), where that call's output feeds nothing else, both modules are called exactly
    once in the whole network (so folding cannot change another call site), and the BatchNorm has running
    statistics for as many channels as the layer has outputs. BatchNorms before a conv (DenseNet's
    pre-activation) or after anything else stay.

    Args:
        model: any module; a copy of it is traced with :func:`torch.fx.symbolic_trace` (children one by one
            where the whole does not trace), so ``model`` is never called on proxies.

    Returns:
        The pairs, as dotted paths from ``model``.
    """
    # Tracing runs forward on proxies, and a forward that caches a value on its module at the first call
    # (torchvision's MultiScaleRoIAlign stores its scales) would keep a proxy there and fail at the next
    # real call: only a throwaway copy is traced. Paths are the same in the copy and in ``model``.
    graphs = _traced_graphs(copy.deepcopy(model), "")
    modules = {}
    for prefix, graph in graphs:
        for node in graph.nodes:
            if node.op == "call_module":
                modules[node] = model.get_submodule(prefix + node.target)
    calls = Counter(id(m) for m in modules.values())
    pairs = []
    for prefix, graph in graphs:
        for node in graph.nodes:
            bn = modules.get(node)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or len(node.all_input_nodes) != 1:
                continue
            source = node.all_input_nodes[0]
            layer = modules.get(source)
            if (
                isinstance(layer, FOLDABLE_LAYERS)
                and len(source.users) == 1
                and calls[id(layer)] == 1
                and calls[id(bn)] == 1
                and bn.running_mean is not None
                and bn.num_features == layer.weight.shape[0]
            ):
                pairs.append(FoldPair(prefix + source.target, prefix + node.target))
    return pairs


def _replace_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, new)


def fuse(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm that directly follows a conv or linear folded into it.

    The folded BatchNorms become ``nn.Identity``; the copy keeps the model's class, so its methods (the
    feature contract included) still work. ``model`` itself is left unchanged. Outputs equal those of
    ``model`` in eval mode up to float rounding: within 1e-5 of the output scale ``max(1, max |y|)`` for
    every zoo model with random BatchNorm statistics, within 1e-10 in float64. The folding is only valid
    for inference: the copy is in eval mode and training it would train the folded weights without
    BatchNorm. A ``Linear -> BatchNorm1d`` pair is folded assuming the linear output is ``(N, features)``,
    the layout in which ``BatchNorm1d`` normalizes the linear's outputs.

    Args:
        model: a module in eval mode (``model.eval()``): folding uses the running statistics, which only
            eval mode uses.

    Returns:
        The fused copy, in eval mode.

    Raises:
        ConfigError: ``model`` is in training mode.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> fuse(net)[1]
        Identity()
    """
    if model.training:
        raise ConfigError("fuse() folds eval-mode BatchNorm statistics: call model.eval() first")
    fused = copy.deepcopy(model)
    for pair in find_fold_pairs(fused):
        layer = fused.get_submodule(pair.layer)
        bn = fused.get_submodule(pair.batchnorm)
        weight, bias = fold_batchnorm(layer.weight, layer.bias, bn)
        layer.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
        layer.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
        _replace_submodule(fused, pair.batchnorm, nn.Identity())
    return fused
