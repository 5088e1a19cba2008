"""What one operation does to the receptive field, and how much arithmetic it costs.

Each call (a leaf module, a ``torch``/``torch.nn.functional`` function or a tensor method) is described by
a :class:`Call` holding its concrete arguments and output; :func:`effect` returns its :class:`Effect`:
the output's :class:`~cnnkit.analysis.field.Field`, its multiply-accumulates and its other elementwise
operations.

Counting conventions (the same as torchvision's published ``GFLOPS``, which count conv and linear MACs):

- ``macs``: convolution ``out.numel() * C_in/groups * prod(kernel)``; transposed convolution
  ``in.numel() * C_out/groups * prod(kernel)``; linear ``out.numel() * in_features``; matmul / bmm / mm /
  einsum the product rule ``out.numel() * prod(contracted sizes)``; multi-head attention its four
  projections and its two batched products. Bias additions are not counted.
- ``other_ops``: one per output element for norms, activations and elementwise arithmetic;
  ``out.numel() * prod(kernel)`` for windowed pools; ``in.numel()`` for adaptive pools and reductions;
  zero for data movement (view, permute, cat, indexing, padding, dropout in eval).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.analysis.field import (
    MAX_PERIOD,
    MaybeField,
    bins,
    broadcast,
    constant_along,
    merge,
    shifted,
    transposed_window,
    upsample,
    window,
)


@dataclass
class Call:
    """One executed operation with its concrete arguments.

    Args:
        op: short name: the module class name, or the function / method name without underscores.
        module: the module for a module call, else ``None``.
        args / kwargs: the concrete arguments (tensors, not graph nodes).
        output: what the call returned.
        fields: field of each input value, keyed by ``id(value)``.
    """

    op: str
    module: nn.Module | None
    args: tuple
    kwargs: dict
    output: Any
    fields: dict[int, MaybeField] = field(default_factory=dict)

    def field_of(self, value: Any) -> MaybeField:
        """Field of an input value (``None`` for constants and values that are not inputs)."""
        return self.fields.get(id(value))

    def tensors(self) -> list[torch.Tensor]:
        """Tensor arguments in order, looking inside lists and tuples."""
        return [t for t in _flatten((self.args, self.kwargs)) if isinstance(t, torch.Tensor)]

    def out(self) -> torch.Tensor:
        """The first output tensor."""
        return first_tensor(self.output)

    def bind(self, names: Sequence[str], defaults: dict[str, Any]) -> dict[str, Any]:
        """Map positional and keyword arguments to ``names`` (a function's parameter order)."""
        bound = dict(defaults)
        bound.update(zip(names, self.args))
        bound.update(self.kwargs)
        return bound


@dataclass
class Effect:
    """Output field and arithmetic of one call."""

    field: MaybeField
    macs: int = 0
    other_ops: int = 0


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _flatten(v)]
    if isinstance(value, dict):
        return [item for v in value.values() for item in _flatten(v)]
    return [value]


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in ``value`` (a tensor, or nested lists / tuples / dicts), or ``None``."""
    return next((t for t in _flatten(value) if isinstance(t, torch.Tensor)), None)


def all_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in ``value``, in order."""
    return [t for t in _flatten(value) if isinstance(t, torch.Tensor)]


_DISPATCHED = {
    F.max_pool1d: "max_pool1d",
    F.max_pool2d: "max_pool2d",
    F.max_pool3d: "max_pool3d",
    F.adaptive_max_pool1d: "adaptive_max_pool1d",
    F.adaptive_max_pool2d: "adaptive_max_pool2d",
    F.adaptive_max_pool3d: "adaptive_max_pool3d",
    F.fractional_max_pool2d: "fractional_max_pool2d",
    F.fractional_max_pool3d: "fractional_max_pool3d",
}


def op_name(target: Any) -> str:
    """Short name of a function or method target: ``operator.add`` -> ``"add"``, ``"relu_"`` -> ``"relu"``."""
    if isinstance(target, str):
        name = target
    else:
        name = _DISPATCHED.get(target) if target in _DISPATCHED else getattr(target, "__name__", str(target))
    name = name.strip("_") if name.startswith("__") else name
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def _ntuple(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def _dim(dim: int, ndim: int) -> int:
    return dim % ndim if ndim else 0


def _warn_global(op: str, reason: str) -> None:
    warnings.warn(f"analyze: {op} {reason}; its receptive field is reported as global", stacklevel=3)


# -- receptive-field rules ------------------------------------------------------------------------------


def _pointwise(call: Call) -> MaybeField:
    """Elementwise ops, norms, activations: the (broadcast) inputs' merged field.

    An op without a rule that changes the size of a spatial axis is reported global, with a warning.
    """
    out = call.out()
    parts = []
    for t in call.tensors():
        f = call.field_of(t)
        if f is None or f.is_global:
            parts.append(f)
            continue
        offset = out.ndim - t.ndim
        if offset < 0 or any(t.shape[a] not in (out.shape[a + offset], 1) for a in f.axes):
            _warn_global(call.op, "changes a spatial size and has no receptive-field rule")
            parts.append(f.made_global())
        else:
            spread = [a + offset for a in f.axes if t.shape[a] != out.shape[a + offset]]
            parts.append(constant_along(broadcast(f, t.ndim, out.ndim), spread))
    return merge(parts)


def _window_from_shapes(f: MaybeField, x: torch.Tensor, out: torch.Tensor, n: int) -> MaybeField:
    """Adaptive pools and shuffles, from the sizes they map: ``L -> O`` per spatial dim.

    Output 1 on every spatial dim is global pooling. Otherwise output ``i`` reads the adaptive bin
    ``[floor(i*L/O), ceil((i+1)*L/O))`` (see :func:`~cnnkit.analysis.field.bins`), which is also what a pixel
    shuffle (nearest upsampling) and unshuffle (a ``k = s`` window) read.
    """
    first = x.ndim - n
    sizes = [(x.shape[first + j], out.shape[first + j]) for j in range(n)]
    if f is None or (f.is_global and not f.axes):
        return f
    if all(o == 1 for _, o in sizes):
        return f.made_global(max(length for length, _ in sizes))
    return bins(f, first, sizes)


def _resize_field(
    f: MaybeField,
    x: torch.Tensor,
    out: torch.Tensor,
    mode: str,
    scale_factor: Any,
    align_corners: bool | None,
    recompute_scale_factor: bool | None,
    antialias: bool = False,
) -> MaybeField:
    """``nn.Upsample`` / ``F.interpolate``: the source step PyTorch uses per output pixel, then
    :func:`~cnnkit.analysis.field.upsample`; ``"area"`` is adaptive average pooling.

    The step is ``(in-1)/(out-1)`` with ``align_corners``, ``1/scale_factor`` when a scale factor is given
    and not recomputed, else ``in/out``.
    """
    n = out.ndim - 2
    if mode == "area":
        return bins(f, 2, [(x.shape[2 + j], out.shape[2 + j]) for j in range(n)])
    scales = _ntuple(scale_factor, n) if scale_factor is not None and not recompute_scale_factor else None
    ratio = []
    for j in range(n):
        length, size = x.shape[2 + j], out.shape[2 + j]
        if align_corners:
            ratio.append(Fraction(length - 1, size - 1) if size > 1 else Fraction(0))
        elif scales is not None:
            ratio.append(1 / Fraction(float(scales[j])).limit_denominator(MAX_PERIOD))
        else:
            ratio.append(Fraction(length, size))
    return upsample(f, 2, ratio, mode, bool(align_corners), bool(antialias))


def _padded(f: MaybeField, ndim: int, pad: Sequence[int]) -> MaybeField:
    """``F.pad`` and padding modules: ``pad`` lists ``(before, after)`` from the last dim backwards; ``before``
    pixels of padding shift the units (a negative value crops)."""
    for j in range(len(pad) // 2):
        f = shifted(f, ndim - 1 - j, -int(pad[2 * j]))
    return f


def _spatial_rank(module: nn.Module) -> int:
    match = re.search(r"(\d)d$", type(module).__name__)
    return int(match.group(1)) if match else 2


def _flatten_field(f: MaybeField, ndim: int, start: int, end: int) -> MaybeField:
    """``flatten(start, end)``: merging a spatial axis with another dim makes the field global."""
    if f is None or f.is_global:
        return f
    start, end = _dim(start, ndim), _dim(end, ndim)
    if end > start and any(start <= a <= end for a in f.axes):
        return f.made_global()
    return f.moved(a - (end - start) if a > end else a for a in f.axes)


def reshape_field(f: MaybeField, in_shape: Sequence[int], out_shape: Sequence[int]) -> MaybeField:
    """view / reshape: the field survives when the dims from the first spatial axis on, or up to the last
    one, are unchanged; any other reshape mixes a spatial axis and makes the field global."""
    if f is None or f.is_global or not f.axes:
        return f
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    low, high = min(f.axes), max(f.axes)
    tail = in_shape[low:]
    if len(out_shape) >= len(tail) and out_shape[len(out_shape) - len(tail) :] == tail:
        return f.moved(a + len(out_shape) - len(in_shape) for a in f.axes)
    if out_shape[: high + 1] == in_shape[: high + 1]:
        return f
    return f.made_global()


def _reduce_field(f: MaybeField, ndim: int, dims: Any, keepdim: bool) -> MaybeField:
    """Reductions (mean, sum, amax, ...): reducing over a spatial axis (or everything) is global."""
    if f is None or f.is_global:
        return f
    if dims is None:
        return f.made_global()
    dims = {_dim(d, ndim) for d in _ntuple(dims, 1)}
    if any(a in dims for a in f.axes):
        return f.made_global()
    if keepdim:
        return f
    return f.moved(a - sum(d < a for d in dims) for a in f.axes)


def _last_dim_reads(f: MaybeField, ndim: int) -> MaybeField:
    """Linear layers read the last dim: if that holds a spatial axis the output is global."""
    if f is not None and not f.is_global and ndim - 1 in f.axes:
        return f.made_global()
    return f


def _matmul_field(call: Call, a: torch.Tensor, b: torch.Tensor) -> MaybeField:
    """``a(..., n, m) @ b(..., m, p)``: a spatial axis on the contracted ``m`` dims makes it global."""
    out = call.out()
    parts = []
    for t, contracted in ((a, a.ndim - 1), (b, max(b.ndim - 2, 0))):
        f = call.field_of(t)
        if f is None or f.is_global:
            parts.append(f)
        elif t.ndim == 1 or contracted in f.axes:
            parts.append(f.made_global())
        else:
            parts.append(broadcast(f, t.ndim, out.ndim))
    return merge(parts)


def _einsum_field(call: Call, equation: str, operands: Sequence[torch.Tensor]) -> MaybeField:
    """einsum: each spatial axis follows its index letter; a summed-out letter makes the field global."""
    inputs, _, output = equation.replace(" ", "").partition("->")
    parts = []
    for spec, t in zip(inputs.split(","), operands):
        f = call.field_of(t)
        if f is None or f.is_global:
            parts.append(f)
            continue
        letters = _einsum_letters(spec, t.ndim)
        out_letters = _einsum_letters(output, call.out().ndim) if output else None
        if out_letters is None or any(letters[a] not in out_letters for a in f.axes):
            parts.append(f.made_global())
        else:
            parts.append(f.moved(out_letters.index(letters[a]) for a in f.axes))
    return merge(parts)


def _einsum_letters(spec: str, ndim: int) -> list[str]:
    """One label per dim; the dims under ``...`` get labels ``"0"``, ``"1"``, ... aligned from the right."""
    left, dots, right = spec.partition("...")
    if not dots:
        return list(left)
    middle = ndim - len(left) - len(right)
    return [*left, *(str(i) for i in range(middle)), *right]


def _getitem_field(call: Call, x: Any, index: Any) -> MaybeField:
    """Indexing: a tuple element keeps the tuple's field; a slice keeps its axis (its start shifts the units, a
    step strides them), an integer index drops its dim (dropping a spatial axis is global), ``None`` inserts
    one."""
    f = call.field_of(x)
    if not isinstance(x, torch.Tensor) or f is None or f.is_global:
        return f
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) for i in index):
        return _pointwise(call)
    consumed = sum(i is not None and i is not Ellipsis for i in index)
    expanded: list[Any] = []
    for i in index:
        expanded.extend([slice(None)] * (x.ndim - consumed) if i is Ellipsis else [i])
    expanded.extend([slice(None)] * (x.ndim - sum(i is not None for i in expanded)))
    new_dim, in_dim, where = 0, 0, {}
    for i in expanded:
        if i is None:
            new_dim += 1
            continue
        if isinstance(i, slice):
            where[in_dim] = new_dim
            start, _, step = i.indices(x.shape[in_dim])
            f = shifted(f, in_dim, start, step)
            new_dim += 1
        elif in_dim in f.axes:
            return f.made_global()
        in_dim += 1
    return f.moved(where[a] for a in f.axes)


def _permute_field(f: MaybeField, order: Sequence[int]) -> MaybeField:
    if f is None or f.is_global:
        return f
    order = [_dim(d, len(order)) for d in order]
    return f.moved(order.index(a) for a in f.axes)


def _cat_field(call: Call, tensors: Sequence[torch.Tensor], dim: int, new_dim: bool) -> MaybeField:
    """cat / stack: merged field; ``stack`` inserts a dim, shifting the axes at or after it."""
    parts = []
    for t in tensors:
        f = call.field_of(t)
        if new_dim and f is not None and not f.is_global:
            d = _dim(dim, t.ndim + 1)
            f = f.moved(a + (a >= d) for a in f.axes)
        parts.append(f)
    return merge(parts)


# -- arithmetic -----------------------------------------------------------------------------------------


def _conv_macs(out: torch.Tensor, weight: torch.Tensor) -> int:
    """``out.numel() * C_in/groups * prod(kernel)``; ``weight[0]`` has exactly ``C_in/groups * prod(k)``."""
    return out.numel() * weight[0].numel()


def _mha_macs(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> int:
    """Projections ``q: L*E*E``, ``k: S*kdim*E``, ``v: S*vdim*E``, ``out: L*E*E`` and the products
    ``QK^T`` and ``AV`` (``L*S*E`` each), per batch element."""
    seq = 1 if module.batch_first else 0
    batch = query.shape[1 - seq] if query.ndim == 3 else 1
    length, source, e = query.shape[seq], key.shape[seq], module.embed_dim
    projections = length * e * e * 2 + source * (module.kdim + module.vdim) * e
    return batch * (projections + 2 * length * source * e)


# -- dispatch -------------------------------------------------------------------------------------------

_MOVEMENT = {
    "view", "reshape", "permute", "transpose", "swapaxes", "swapdims", "flatten", "unflatten", "cat",
    "concat", "concatenate", "stack", "getitem", "contiguous", "clone", "squeeze", "unsqueeze", "expand",
    "expand_as", "repeat", "chunk", "split", "unbind", "pad", "to", "type", "float", "double", "half",
    "detach", "narrow", "select", "roll", "flip", "t", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "Identity", "Flatten", "Unflatten", "PixelShuffle", "PixelUnshuffle", "ChannelShuffle",
}  # fmt: skip


def effect(call: Call) -> Effect:
    """Field, MACs and other elementwise ops of one call (see the module docstring for conventions)."""
    result = _module_effect(call) if call.module is not None else _function_effect(call)
    if result.macs == 0 and result.other_ops == 0 and not _moves_data(call):
        result.other_ops = sum(t.numel() for t in all_tensors(call.output))
    return result


def _moves_data(call: Call) -> bool:
    """Data movement and eval-mode no-ops: they cost no arithmetic."""
    m = call.module
    return (
        call.op in _MOVEMENT
        or isinstance(m, (nn.modules.dropout._DropoutNd, nn.Identity))
        or (m is not None and type(m).__module__ == "torch.nn.modules.padding")
    )


def _module_effect(call: Call) -> Effect:
    m, x, out = call.module, call.tensors()[0], call.out()
    f = call.field_of(x)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        n = len(m.kernel_size)
        field_ = transposed_window(f, x.ndim - n, m.kernel_size, m.stride, m.dilation, m.padding)
        return Effect(field_, x.numel() * m.weight[0].numel())
    if isinstance(m, nn.modules.conv._ConvNd):
        n = len(m.kernel_size)
        field_ = window(f, x.ndim - n, m.kernel_size, m.stride, m.dilation, m.padding)
        return Effect(field_, _conv_macs(out, m.weight))
    if isinstance(
        m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._LPPoolNd)
    ):
        n = _spatial_rank(m)
        kernel = _ntuple(m.kernel_size, n)
        stride = _ntuple(m.stride or m.kernel_size, n)
        dilation = _ntuple(getattr(m, "dilation", 1), n)
        padding = _ntuple(getattr(m, "padding", 0), n)
        field_ = window(f, x.ndim - n, kernel, stride, dilation, padding)
        return Effect(field_, 0, out.numel() * math.prod(kernel))
    if isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return Effect(_window_from_shapes(f, x, out, _spatial_rank(m)), 0, x.numel())
    if isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
        return Effect(_window_from_shapes(f, x, out, 2))
    if isinstance(m, nn.Upsample):
        return Effect(
            _resize_field(f, x, out, m.mode, m.scale_factor, m.align_corners, m.recompute_scale_factor),
            0,
            out.numel(),
        )
    if isinstance(m, nn.Linear):
        return Effect(_last_dim_reads(f, x.ndim), out.numel() * m.in_features)
    if isinstance(m, nn.Bilinear):
        tensors = call.tensors()
        fields = [_last_dim_reads(call.field_of(t), t.ndim) for t in tensors]
        return Effect(merge(fields), out.numel() * m.in1_features * m.in2_features)
    if isinstance(m, nn.MultiheadAttention):
        tensors = call.tensors()
        fields = [call.field_of(t) for t in tensors]
        merged = merge(fields)
        return Effect(None if merged is None else merged.made_global(), _mha_macs(m, tensors[0], tensors[1]))
    if isinstance(m, nn.Flatten):
        return Effect(_flatten_field(f, x.ndim, m.start_dim, m.end_dim))
    if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        return Effect(_reduce_field(f, x.ndim, m.dim, keepdim=True), 0, out.numel())
    if type(m).__module__ == "torch.nn.modules.padding":
        return Effect(_padded(f, x.ndim, m.padding))
    return Effect(_pointwise(call))


def _pool_effect(call: Call, names: Sequence[str], dilation_name: str | None) -> Effect:
    x, out = call.tensors()[0], call.out()
    n = int(call.op.split("pool")[1][0])
    a = call.bind(names, {"stride": None, "dilation": 1, "padding": 0})
    kernel = _ntuple(a["kernel_size"], n)
    stride = _ntuple(a["stride"] or a["kernel_size"], n)
    dilation = _ntuple(a[dilation_name], n) if dilation_name else (1,) * n
    f = window(call.field_of(x), x.ndim - n, kernel, stride, dilation, _ntuple(a["padding"], n))
    return Effect(f, 0, out.numel() * math.prod(kernel))


_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_T = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_MAX_POOL = ("input", "kernel_size", "stride", "padding", "dilation")
_AVG_POOL = ("input", "kernel_size", "stride", "padding")
_LP_POOL = ("input", "norm_type", "kernel_size", "stride")
_INTERPOLATE = (
    "input",
    "size",
    "scale_factor",
    "mode",
    "align_corners",
    "recompute_scale_factor",
    "antialias",
)
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod", "norm", "logsumexp", "nansum",
               "nanmean", "argmax", "argmin", "all", "any", "median", "std_mean", "var_mean"}  # fmt: skip
_SOFTMAX = {"softmax", "log_softmax", "softmin", "cumsum", "cumprod", "cummax", "cummin"}


def _function_effect(call: Call) -> Effect:
    op, out = call.op, call.out()
    tensors = call.tensors()
    x = tensors[0] if tensors else None
    f = call.field_of(x) if x is not None else None
    if re.fullmatch(r"conv[123]d", op):
        a = call.bind(_CONV, {"stride": 1, "dilation": 1, "padding": 0})
        w = a["weight"]
        n = w.ndim - 2
        padding = a["padding"] if isinstance(a["padding"], str) else _ntuple(a["padding"], n)
        stride, dilation = _ntuple(a["stride"], n), _ntuple(a["dilation"], n)
        return Effect(window(f, x.ndim - n, w.shape[2:], stride, dilation, padding), _conv_macs(out, w))
    if re.fullmatch(r"conv_transpose[123]d", op):
        a = call.bind(_CONV_T, {"stride": 1, "dilation": 1, "padding": 0})
        w = a["weight"]
        n = w.ndim - 2
        stride, dilation, padding = (_ntuple(a[k], n) for k in ("stride", "dilation", "padding"))
        field_ = transposed_window(f, x.ndim - n, w.shape[2:], stride, dilation, padding)
        return Effect(field_, x.numel() * w[0].numel())
    if re.fullmatch(r"max_pool[123]d(_with_indices)?", op):
        return _pool_effect(call, _MAX_POOL, "dilation")
    if re.fullmatch(r"avg_pool[123]d", op):
        return _pool_effect(call, _AVG_POOL, None)
    if re.fullmatch(r"lp_pool[123]d", op):
        return _pool_effect(call, _LP_POOL, None)
    if re.fullmatch(r"adaptive_(avg|max)_pool[123]d(_with_indices)?", op):
        return Effect(_window_from_shapes(f, x, out, int(op.split("pool")[1][0])), 0, x.numel())
    if op in ("pixel_shuffle", "pixel_unshuffle"):
        return Effect(_window_from_shapes(f, x, out, 2))
    if op in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
        a = call.bind(_INTERPOLATE, {"scale_factor": None, "mode": "nearest", "align_corners": None})
        # F.upsample_bilinear is interpolate(mode="bilinear", align_corners=True)
        mode, corners = {"upsample_nearest": ("nearest", None), "upsample_bilinear": ("bilinear", True)}.get(
            op, (a["mode"], a["align_corners"])
        )
        field_ = _resize_field(
            f,
            x,
            out,
            mode,
            a["scale_factor"],
            corners,
            a.get("recompute_scale_factor"),
            a.get("antialias", False),
        )
        return Effect(field_, 0, out.numel())
    if op == "linear":
        w = call.bind(("input", "weight"), {})["weight"]
        return Effect(_last_dim_reads(f, x.ndim), out.numel() * w.shape[-1])
    if op in ("matmul", "bmm", "mm"):
        a, b = call.args[0], call.args[1]
        return Effect(_matmul_field(call, a, b), out.numel() * a.shape[-1])
    if op in ("addmm", "baddbmm"):
        bias, a, b = call.args[0], call.args[1], call.args[2]
        return Effect(merge([_matmul_field(call, a, b), call.field_of(bias)]), out.numel() * a.shape[-1])
    if op == "einsum":
        equation = call.args[0]
        operands = (
            call.args[1] if len(call.args) == 2 and isinstance(call.args[1], (list, tuple)) else call.args[1:]
        )
        return Effect(_einsum_field(call, equation, operands), _einsum_macs(equation, operands, out))
    if op == "scaled_dot_product_attention":
        q, k, v = tensors[:3]
        merged = merge([call.field_of(t) for t in (q, k, v)])
        macs = q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return Effect(None if merged is None else merged.made_global(), macs)
    if op == "flatten":
        a = call.bind(("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
        return Effect(_flatten_field(f, x.ndim, a["start_dim"], a["end_dim"]))
    if op in ("view", "reshape"):
        return Effect(reshape_field(f, x.shape, out.shape))
    if op in _REDUCTIONS:
        a = call.bind(("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
        return Effect(_reduce_field(f, x.ndim, a["dim"], a["keepdim"]), 0, x.numel())
    if op in _SOFTMAX:
        a = call.bind(("input", "dim"), {"dim": None})
        return Effect(_reduce_field(f, x.ndim, a["dim"], keepdim=True), 0, out.numel())
    if op == "permute":
        order = call.args[1:] if not isinstance(call.args[1], (list, tuple)) else call.args[1]
        return Effect(_permute_field(f, call.kwargs.get("dims", order)))
    if op in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = _dim(call.args[1], x.ndim), _dim(call.args[2], x.ndim)
        order = list(range(x.ndim))
        order[d0], order[d1] = d1, d0
        return Effect(_permute_field(f, order))
    if op in ("cat", "concat", "concatenate", "stack"):
        a = call.bind(("tensors", "dim"), {"dim": 0})
        return Effect(_cat_field(call, a["tensors"], a["dim"], new_dim=op == "stack"))
    if op == "getitem":
        return Effect(_getitem_field(call, call.args[0], call.args[1]))
    if op == "pad":
        return Effect(_padded(f, x.ndim, call.bind(("input", "pad"), {})["pad"]))
    if op == "narrow":
        a = call.bind(("input", "dim", "start", "length"), {})
        dim = _dim(a["dim"], x.ndim)
        return Effect(shifted(f, dim, int(a["start"]) % x.shape[dim]))
    if op in ("chunk", "split", "unbind", "roll", "flip", "contiguous", "clone", "detach"):
        return Effect(f)
    if op in ("squeeze", "unsqueeze"):
        return Effect(reshape_field(f, x.shape, out.shape))
    return Effect(_pointwise(call))


def _einsum_macs(equation: str, operands: Sequence[torch.Tensor], out: torch.Tensor) -> int:
    """Product rule: ``out.numel()`` times the size of every summed-out index."""
    inputs, _, output = equation.replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for spec, t in zip(inputs.split(","), operands):
        sizes.update(zip(_einsum_letters(spec, t.ndim), t.shape))
    kept = set(output) if output else {c for c in inputs if inputs.count(c) == 1 and c.isalpha()}
    summed = [s for c, s in sizes.items() if c.isalpha() and c not in kept]
    return out.numel() * math.prod(summed)
