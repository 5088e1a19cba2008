"""``analyze(model, input_size)``: walk a network's torch.fx graph on a real input and report every node.

The model is traced with :func:`torch.fx.symbolic_trace` and run node by node by an
:class:`torch.fx.Interpreter`, so every node sees its concrete input tensors: shapes, parameters, MACs and
the receptive field follow from the rules in :mod:`cnnkit.analysis.rules`, through branches, residual
additions and concatenations alike. A model that cannot be traced (data-dependent control flow, for
example) falls back to forward hooks on its leaf modules, with a warning: rows are then per leaf module
call, functional ops between modules are invisible, and the receptive field assumes the modules form a
chain in call order.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import torch
import torch.fx
from torch import nn

from cnnkit.analysis.field import MaybeField, input_field, reported_jump, reported_rf
from cnnkit.analysis.report import AnalysisReport, LayerRow
from cnnkit.analysis.rules import Call, all_tensors, effect, first_tensor, op_name, reshape_field


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
        result = super().run_node(n)
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
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return recorder.rows, state["field"]


def analyze(
    model: nn.Module,
    input_size: tuple[int, ...] = (1, 3, 224, 224),
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> AnalysisReport:
    """Per-node shapes, parameters, MACs, activation memory, receptive field and jump of any network.

    The model runs once, in eval mode and under ``torch.no_grad`` (its training flag is restored after), on
    a zero input of ``input_size``. MACs count conv, transposed conv, linear, matmul / bmm / einsum and
    attention (torchvision's ``GFLOPS`` convention: ``resnet50`` at 224 gives 4.089 G); norms, pools and
    activations go to ``other_ops``. The receptive field follows the reference page's
    ``rf_out = rf_in + d*(k-1)*jump_in``, ``jump_out = jump_in*s`` through every branch; a node with several
    inputs takes the largest field, and global pooling, adaptive pooling to 1x1, flatten, reductions over
    spatial dims, linear layers reading a spatial dim and attention make it ``"global"`` (details in
    :mod:`cnnkit.analysis.field`).

    Args:
        model: any ``nn.Module`` taking one tensor.
        input_size: input shape including the batch dim; the report covers the whole batch.
        device: where to run (default: the device of the model's first parameter, else CPU).
        dtype: input dtype (activation bytes follow it).

    Returns:
        an :class:`AnalysisReport`; ``method`` is ``"fx"``, or ``"hooks"`` after the fallback.

    Shape:
        - Input: ``input_size``, e.g. ``(N, C, H, W)``.

    Example:
        >>> import torch.nn as nn
        >>> analyze(nn.Conv2d(3, 8, 3), (1, 3, 8, 8)).macs  # 6*6 outputs * 8 channels * 3*3*3
        7776
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                traced = torch.fx.symbolic_trace(model)
            except Exception as err:  # any tracing failure: fall back, and say why
                warnings.warn(
                    f"analyze: torch.fx could not trace {type(model).__name__} ({type(err).__name__}: {err}); "
                    "falling back to forward hooks on leaf modules: functional ops are not counted and the "
                    "receptive field assumes the modules form a chain",
                    stacklevel=2,
                )
                rows, out_field = _walk_hooks(model, x)
                method = "hooks"
            else:
                recorder = _Recorder()
                walker = _GraphWalker(traced, recorder)
                walker.run(x)
                rows, out_field, method = recorder.rows, walker.output_field, "fx"
    finally:
        model.train(was_training)
    unique = list(model.parameters())
    macs = sum(row.macs for row in rows)
    return AnalysisReport(
        rows=rows,
        input_size=tuple(input_size),
        params=sum(p.numel() for p in unique),
        trainable_params=sum(p.numel() for p in unique if p.requires_grad),
        macs=macs,
        flops=2 * macs,
        activation_bytes=sum(row.activation_bytes for row in rows),
        rf=reported_rf(out_field),
        jump=reported_jump(out_field),
        method=method,
    )
