"""``analyze(model, input_size)``: walk a network's torch.fx graph on a real input and report every node.

The model is traced with :func:`torch.fx.symbolic_trace` and run node by node by an
:class:`torch.fx.Interpreter`, so every node sees its concrete input tensors: shapes, parameters, MACs and
the receptive field follow from the rules in :mod:`cnnkit.analysis.rules`, through branches, residual
additions and concatenations alike. A model that cannot be traced (data-dependent control flow, for
example) falls back to forward hooks on its leaf modules, with a warning: rows are then per leaf module
call, functional ops between modules are invisible, and the receptive field assumes the modules form a
chain in call order.

The input size defaults to the model card's (``model.default_cfg["input_size"]``, set by
:func:`cnnkit.create_model`) and may omit the batch dim. A ``dtype`` other than the model's is analysed on
a converted copy. A size or dtype the model cannot run on is a :class:`~cnnkit.errors.ConfigError`.
"""

from __future__ import annotations

import copy
import numbers
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch import nn

from cnnkit.analysis.field import MaybeField, input_field, reported_jump, reported_rf
from cnnkit.analysis.report import AnalysisReport, LayerRow
from cnnkit.analysis.rules import Call, all_tensors, effect, first_tensor, op_name, reshape_field
from cnnkit.errors import CnnkitError, ConfigError

DEFAULT_INPUT_SIZE = (1, 3, 224, 224)
"""Input size of a model without ``default_cfg["input_size"]``."""


class _ModelFailed(Exception):
    """The model's own forward pass raised ``error`` (not the analysis); :func:`analyze` reports it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _run_model(run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)``, a step of the model's forward pass; PyTorch's errors become :class:`_ModelFailed`."""
    try:
        return run(*args)
    except CnnkitError:
        raise
    except (RuntimeError, ValueError, IndexError, AssertionError) as err:
        raise _ModelFailed(err) from err


class _Recorder:
    """Rows and parameter bookkeeping shared by the graph walk and the hook fallback."""

    def __init__(self) -> None:
        self.rows: list[LayerRow] = []
        self.seen: set[int] = set()
        self.calls: Counter[str] = Counter()

    def new_params(self, params: list[torch.Tensor]) -> int:
        """Count the parameters not seen before (shared ones count once, at first use)."""
        total = 0
        for p in params:
            if id(p) not in self.seen:
                self.seen.add(id(p))
                total += p.numel()
        return total

    def module_name(self, path: str) -> str:
        """The module path, with ``#k`` for the k-th call of a module called more than once."""
        self.calls[path] += 1
        return path if self.calls[path] == 1 else f"{path}#{self.calls[path]}"

    def add(self, name: str, call: Call, params: int) -> MaybeField:
        """Append the row of ``call`` and return its output field."""
        result = effect(call)
        out = call.out()
        self.rows.append(
            LayerRow(
                name=name,
                op=call.op,
                output_shape=tuple(out.shape),
                params=params,
                macs=int(result.macs),
                activation_bytes=sum(t.numel() * t.element_size() for t in all_tensors(call.output)),
                rf=reported_rf(result.field),
                jump=reported_jump(result.field),
                other_ops=int(result.other_ops),
            )
        )
        return result.field


class _GraphWalker(torch.fx.Interpreter):
    """Runs a traced module and records one row per tensor-producing node."""

    def __init__(self, module: torch.fx.GraphModule, recorder: _Recorder) -> None:
        super().__init__(module)
        self.recorder = recorder
        self.fields: dict[torch.fx.Node, MaybeField] = {}
        self.output_field: MaybeField = None

    def run_node(self, n: torch.fx.Node) -> Any:
        result = _run_model(super().run_node, n)
        if n.op == "placeholder":
            self.fields[n] = input_field(result.ndim) if isinstance(result, torch.Tensor) else None
        elif n.op == "output":
            first = next((m for m in n.all_input_nodes if first_tensor(self.env.get(m)) is not None), None)
            self.output_field = self.fields.get(first)
        elif n.op == "get_attr" or first_tensor(result) is None:
            self.fields[n] = None
        else:
            self.fields[n] = self._record(n, result)
        return result

    def _record(self, n: torch.fx.Node, result: Any) -> MaybeField:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        fields = {id(self.env[m]): self.fields.get(m) for m in n.all_input_nodes}
        attrs = [self.env[m] for m in n.all_input_nodes if m.op == "get_attr"]
        params = [p for p in attrs if isinstance(p, nn.Parameter)]
        if n.op == "call_module":
            module = self.fetch_attr(n.target)
            name = self.recorder.module_name(n.target)
            call = Call(type(module).__name__, module, args, kwargs, result, fields)
            params = list(module.parameters()) + params
        else:
            stack = n.meta.get("nn_module_stack") or {}
            scope = next(reversed(stack), "") if stack else ""
            name = f"{scope}.{n.name}" if scope else n.name
            call = Call(op_name(n.target), None, args, kwargs, result, fields)
        return self.recorder.add(name, call, self.recorder.new_params(params))


def _walk_hooks(model: nn.Module, x: torch.Tensor) -> tuple[list[LayerRow], MaybeField]:
    """Forward hooks on leaf modules; each module's input field is the previous module's output field."""
    recorder = _Recorder()
    state: dict[str, Any] = {"field": input_field(x.ndim), "shape": tuple(x.shape)}

    def hook(module: nn.Module, inputs: tuple, output: Any, path: str) -> None:
        if first_tensor(output) is None or first_tensor(inputs) is None:
            return
        first = first_tensor(inputs)
        field = reshape_field(state["field"], state["shape"], tuple(first.shape))
        call = Call(type(module).__name__, module, inputs, {}, output, {id(first): field})
        params = recorder.new_params(list(module.parameters()))
        state["field"] = recorder.add(recorder.module_name(path), call, params)
        state["shape"] = tuple(first_tensor(output).shape)

    def hook_for(path: str) -> Any:
        return lambda module, inputs, output: hook(module, inputs, output, path)

    leaves = [(path, m) for path, m in model.named_modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook_for(path or type(m).__name__)) for path, m in leaves]
    try:
        _run_model(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return recorder.rows, state["field"]


_DIM_NAMES = {3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}


def _input_ndim(model: nn.Module, card_size: Sequence[int] | None) -> int | None:
    """Dims of the model's input, batch included: the card's size plus one, else from the first conv or
    pool (``Conv2d`` takes 4), else unknown."""
    if card_size is not None:
        return len(card_size) + 1
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return len(m.kernel_size) + 2
        match = re.search(r"Pool(\d)d$", type(m).__name__)
        if match:
            return int(match.group(1)) + 2
    return None


def resolve_input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, ...]:
    """The input shape :func:`analyze` runs ``model`` on, batch dim included.

    ``None`` means the model card's ``default_cfg["input_size"]`` (set by :func:`cnnkit.create_model`), else
    ``(1, 3, 224, 224)``. A size one dim short of the model's input (``(C, H, W)`` for a 2-d CNN) gets a
    batch of 1.

    Args:
        model: the model; its ``default_cfg``, else its first conv or pool, tells its input's dims.
        input_size: ``(N, C, *spatial)``, ``(C, *spatial)`` or ``None``.

    Returns:
        ``(N, C, *spatial)``.

    Raises:
        ConfigError: sizes that are not positive whole numbers, or a number of dims the model cannot take.

    Shape:
        - Output: ``(N, C, *spatial)``, e.g. ``(1, 3, 299, 299)`` for ``inception_v3``.

    Example:
        >>> from torch import nn
        >>> resolve_input_size(nn.Conv2d(3, 8, 3), (3, 32, 32))
        (1, 3, 32, 32)
    """
    cfg = getattr(model, "default_cfg", None)
    card_size = tuple(cfg["input_size"]) if isinstance(cfg, dict) and cfg.get("input_size") else None
    ndim = _input_ndim(model, card_size)
    name = type(model).__name__
    if input_size is None:
        if card_size is not None:
            return (1, *card_size)
        if ndim not in (None, len(DEFAULT_INPUT_SIZE)):
            takes = _DIM_NAMES.get(ndim, f"{ndim} dims")
            raise ConfigError(f"{name} has no default_cfg['input_size'] and takes {takes}: pass input_size")
        return DEFAULT_INPUT_SIZE
    size = tuple(input_size) if isinstance(input_size, Sequence) else ()
    if not size or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in size
    ):
        raise ConfigError(
            f"input_size must be positive whole numbers, e.g. (1, 3, 224, 224); got {input_size!r}"
        )
    size = tuple(int(v) for v in size)
    if ndim is None or len(size) == ndim:
        return size
    if len(size) == ndim - 1:
        return (1, *size)
    names = _DIM_NAMES.get(ndim, f"{ndim} dims (N, C, ...)")
    example = (1, *card_size) if card_size is not None else (1, 3, *[224] * (ndim - 2))
    raise ConfigError(
        f"input_size {size} has {len(size)} dims; {name} takes {names} or, without the batch dim, "
        f"{names.replace('N, ', '')}, e.g. {example} or {example[1:]}"
    )


def _converted(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model``, or a copy in ``dtype`` when its floating parameters or buffers have another dtype."""
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype must be a torch.dtype such as torch.float16; got {dtype!r}")
    tensors = [*model.parameters(), *model.buffers()]
    if not dtype.is_floating_point or all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return model
    try:
        return copy.deepcopy(model).to(dtype)
    except Exception as err:  # a model that cannot be copied: say what to do instead
        raise ConfigError(
            f"cannot copy {type(model).__name__} to convert it to {dtype} ({type(err).__name__}: {err}); "
            f"convert it yourself (model.to({dtype})) and pass the converted model"
        ) from err


def _failure(
    model: nn.Module, size: tuple[int, ...], dtype: torch.dtype, device: torch.device, error: Exception
) -> ConfigError:
    """The one-line error of a model that cannot run on the analysed input, with what to try."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    shape = "x".join(map(str, size[1:])) or "scalar"
    dtype_name = str(dtype).removeprefix("torch.")
    message = f"{type(model).__name__} cannot run on a {shape} input (batch {size[0]}, {dtype_name}): {first}"
    if not dtype.is_floating_point:
        message += "; pass a floating dtype (the model is converted to it)"
    elif dtype in (torch.float16, torch.bfloat16) and torch.device(device).type == "cpu":
        message += (
            f"; {dtype_name} may be unsupported on CPU: analyse in float32 (shapes, parameters and MACs do not"
            " depend on the dtype; activation bytes scale with the element size) or pass device='cuda'"
        )
    return ConfigError(message)


def analyze(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> AnalysisReport:
    """Per-node shapes, parameters, MACs, activation memory, receptive field and jump of any network.

    The model runs once, in eval mode and under ``torch.no_grad`` (its training flag is restored after), on
    a zero input of ``input_size``. MACs count conv, transposed conv, linear, matmul / bmm / einsum and
    attention (torchvision's ``GFLOPS`` convention: ``resnet50`` at 224 gives 4.089 G); norms, pools and
    activations go to ``other_ops``. The receptive field is the widest output unit's: the reference page's
    ``rf_out = rf_in + d*(k-1)*jump_in``, ``jump_out = jump_in*s`` for strided layers, and an exact unit by
    unit account through upsampling and transposed convs; a node with several inputs sees the union of its
    inputs' fields, and global pooling, adaptive pooling to 1x1, flatten, reductions over spatial dims,
    linear layers reading a spatial dim and attention make it ``"global"`` (details in
    :mod:`cnnkit.analysis.field`).

    Args:
        model: any ``nn.Module`` taking one tensor. It is not modified.
        input_size: input shape, with or without the batch dim (``(1, 3, 224, 224)`` or ``(3, 224, 224)``:
            batch 1); the report covers the whole batch. Default: the model card's
            (``model.default_cfg["input_size"]``, e.g. ``(3, 299, 299)`` for ``inception_v3``), else
            ``(1, 3, 224, 224)``.
        device: where to run (default: the device of the model's first parameter, else CPU).
        dtype: input dtype; activation bytes follow it. A floating dtype other than the model's runs on a
            converted copy of the model (``torch.float16`` works on CPU for the usual layers).

    Returns:
        an :class:`AnalysisReport`; ``method`` is ``"fx"``, or ``"hooks"`` after the fallback;
        ``input_size`` includes the batch dim.

    Raises:
        ConfigError: ``input_size`` with the wrong number of dims or non-positive sizes, a ``dtype`` that is
            not a ``torch.dtype``, or an input the model cannot run on (too small, wrong channels, a dtype
            without kernels on ``device``), as one line naming the input and PyTorch's reason.

    Shape:
        - Input: ``input_size``, e.g. ``(N, C, H, W)`` or ``(C, H, W)``.

    Example:
        >>> import torch.nn as nn
        >>> analyze(nn.Conv2d(3, 8, 3), (1, 3, 8, 8)).macs  # 6*6 outputs * 8 channels * 3*3*3
        7776
        >>> analyze(nn.Conv2d(3, 8, 3), (3, 8, 8)).input_size
        (1, 3, 8, 8)
    """
    size = resolve_input_size(model, input_size)
    net = _converted(model, dtype)
    if device is None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
    x = torch.zeros(size, device=device, dtype=dtype)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            try:
                traced = torch.fx.symbolic_trace(net)
            except Exception as err:  # any tracing failure: fall back, and say why
                warnings.warn(
                    f"analyze: torch.fx could not trace {type(net).__name__} ({type(err).__name__}: {err}); "
                    "falling back to forward hooks on leaf modules: functional ops are not counted and the "
                    "receptive field assumes the modules form a chain",
                    stacklevel=2,
                )
                rows, out_field = _walk_hooks(net, x)
                method = "hooks"
            else:
                recorder = _Recorder()
                walker = _GraphWalker(traced, recorder)
                walker.run(x)
                rows, out_field, method = recorder.rows, walker.output_field, "fx"
    except _ModelFailed as failed:
        raise _failure(model, size, dtype, device, failed.error) from failed.error
    finally:
        net.train(was_training)
    unique = list(net.parameters())
    macs = sum(row.macs for row in rows)
    return AnalysisReport(
        rows=rows,
        input_size=size,
        params=sum(p.numel() for p in unique),
        trainable_params=sum(p.numel() for p in unique if p.requires_grad),
        macs=macs,
        flops=2 * macs,
        activation_bytes=sum(row.activation_bytes for row in rows),
        rf=reported_rf(out_field),
        jump=reported_jump(out_field),
        method=method,
    )
