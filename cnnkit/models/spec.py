"""Build a network from the reference page's arrow notation.

The page writes LeNet-5 as::

    Input(32x32) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(120) -> FC(84) -> FC(10)

and ``cnnkit.build`` turns exactly that string into a :class:`SpecNet` with 61,706 parameters.

Grammar (layer names are case-insensitive; whitespace between tokens is ignored)::

    spec     := layer ( "->" layer )*
    layer    := NAME [ "(" [ argument ( "," argument )* ] ")" ]
    argument := value | key "=" value

Layers:

- ``Input(CxHxW)`` or ``Input(HxW)`` (one channel): required, first and only first.
- ``Conv(KxK,C[,s=1][,p=valid][,d=1][,g=1])``: convolution to ``C`` channels; ``K`` alone means ``KxK``;
  ``p`` is ``valid`` (0, the default, as the page's LeNet needs: 32 -> 28), ``same`` (``d*(K-1)/2`` per
  side; odd effective kernels only) or a number; the long keys ``stride``, ``padding``, ``dilation``,
  ``groups`` work too.
- ``DWConv(KxK[,s=1][,p=valid][,d=1])``: depthwise convolution (one filter per channel, same channels).
- ``Pool``: 2x2 pooling with stride 2 (max; average with ``build(..., pool="avg")``).
- ``MaxPool(K[,s][,p=0])``, ``AvgPool(K[,s][,p=0])``: window ``K`` (or ``KxK``), stride ``s`` (default ``K``).
- ``GAP``: global average pooling to ``(N, C)``.
- ``BN``: batch norm (2-D on maps, 1-D after flattening).
- ``ReLU``, ``GELU``, ``SiLU``, ``Tanh``, ``Sigmoid``, ``LeakyReLU(slope)`` (default 0.01), ``Identity``
  (adds nothing; it only replaces the default activation).
- ``Dropout(p)``: dropout with probability ``p`` (default 0.5).
- ``FC(N)``: fully connected layer to ``N`` units; flattens a map first.

Default activation: every ``Conv``, ``DWConv`` and ``FC`` is followed by the default activation (``ReLU``,
or ``build(..., act="tanh")`` etc.) except the last of them, which produces the output. An explicit
activation right after the layer, or right after its ``BN``, replaces the default: ``Conv(3x3,16) -> BN``
is conv, BN, ReLU; ``Conv(3x3,16) -> BN -> GELU`` is conv, BN, GELU; ``Conv(3x3,16) -> Identity`` is the
conv alone. A ``Conv``/``DWConv`` directly followed by ``BN`` has no bias (the BN shift replaces it).

Once a layer flattens the map (``GAP``, or the first ``FC``) the network is flat: a later ``Conv``,
``DWConv`` or pooling is an error. Everything before the flattening is ``forward_features``; the rest is
``forward_head``. Modules are named by kind and count — ``conv1``, ``act1``, ``pool1``, ``bn1``,
``drop1``, ``dwconv1``, ``gap``, ``flatten``, ``fc1`` — so per-layer tables read like the spec.

Sizes (non-negative integers) have at most 9 digits and a network at most 10^9 parameters, so a typo
cannot allocate memory without bound. Every mistake raises :class:`SpecTokenError` (a
:class:`cnnkit.errors.SpecError`) that prints the spec with a caret under the offending token.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import torch
from torch import nn

from cnnkit.errors import ConfigError, SpecError, closest
from cnnkit.geometry import conv_output_size, pool_output_size, same_padding
from cnnkit.models.base import ClassifierModel, FeatureInfo

__all__ = ["MAX_PARAMS", "SpecNet", "SpecTokenError", "build"]

MAX_PARAMS = 10**9
_MAX_DIGITS = 9
_EXPECTED_LAYER = "expected a layer such as Conv(3x3,16), Pool, FC(10)"


class SpecTokenError(SpecError):
    """A :class:`SpecError` that points at one token of the spec.

    ``str(err)`` is three lines: the problem, the spec, and a caret under the bad token.
    :meth:`one_line` gives the same information on one line (for the command line).

    Attributes:
        spec: the spec string.
        column: 0-based column of the bad token.
        length: length of the bad token (at least 1).
        problem: what was wrong and what was expected.
    """

    def __init__(self, spec: str, column: int, length: int, problem: str) -> None:
        self.spec = spec
        self.column = max(0, min(column, len(spec)))
        self.length = max(1, length)
        self.problem = problem
        shown = re.sub(r"\s", " ", spec)
        caret = " " * self.column + "^" + "~" * (self.length - 1)
        super().__init__(f"{problem}\n  {shown}\n  {caret}")

    def one_line(self) -> str:
        """The problem, the column and the token, on one line."""
        token = self.spec[self.column : self.column + self.length]
        where = f"at column {self.column + 1}, {token!r}" if token else "at the end of the spec"
        return f"{self.problem} ({where})"


@dataclass(frozen=True)
class _Arg:
    key: str | None
    value: str
    column: int
    text: str


@dataclass(frozen=True)
class _Token:
    name: str
    text: str
    column: int
    position: int
    args: tuple[_Arg, ...]


@dataclass(frozen=True)
class _Kind:
    """A layer's signature: parameter names in positional order, how many are positional / required."""

    name: str
    params: tuple[str, ...] = ()
    positional: int = 0
    required: int = 0
    example: str = ""
    aliases: dict[str, str] = field(default_factory=dict)


_SHORT_KEYS = {"s": "stride", "p": "padding", "d": "dilation", "g": "groups"}
_ACTIVATIONS: dict[str, tuple[str, Callable[..., nn.Module] | None]] = {
    "relu": ("ReLU", nn.ReLU),
    "gelu": ("GELU", nn.GELU),
    "silu": ("SiLU", nn.SiLU),
    "tanh": ("Tanh", nn.Tanh),
    "sigmoid": ("Sigmoid", nn.Sigmoid),
    "leakyrelu": ("LeakyReLU", nn.LeakyReLU),
    "identity": ("Identity", None),
}
_KINDS: dict[str, _Kind] = {
    "input": _Kind("Input", ("shape",), 1, 1, "Input(1x32x32)"),
    "conv": _Kind(
        "Conv", ("kernel", "channels", "stride", "padding", "dilation", "groups"), 2, 2, "Conv(3x3,16)"
    ),
    "dwconv": _Kind("DWConv", ("kernel", "stride", "padding", "dilation"), 1, 1, "DWConv(3x3,s=2)"),
    "pool": _Kind("Pool", example="Pool"),
    "maxpool": _Kind("MaxPool", ("kernel", "stride", "padding"), 2, 1, "MaxPool(3,2)"),
    "avgpool": _Kind("AvgPool", ("kernel", "stride", "padding"), 2, 1, "AvgPool(2)"),
    "gap": _Kind("GAP", example="GAP"),
    "bn": _Kind("BN", example="BN"),
    "dropout": _Kind("Dropout", ("p",), 1, 0, "Dropout(0.5)"),
    "fc": _Kind("FC", ("features",), 1, 1, "FC(10)"),
    **{key: _Kind(name, example=name) for key, (name, _) in _ACTIVATIONS.items()},
}
_KINDS["leakyrelu"] = _Kind("LeakyReLU", ("slope",), 1, 0, "LeakyReLU(0.1)", {"negative_slope": "slope"})
_WEIGHTED = ("conv", "dwconv", "fc")


def _tokenize(spec: str) -> list[_Token]:
    """Split ``spec`` into layer tokens with their columns; syntax errors raise :class:`SpecTokenError`."""
    if not spec.strip():
        raise SpecTokenError(spec, 0, 1, f"empty spec; {_EXPECTED_LAYER}, starting with Input(1x32x32)")
    tokens = []
    start = 0
    for position, segment in enumerate(spec.split("->"), start=1):
        tokens.append(_parse_layer(spec, segment, start, position))
        start += len(segment) + 2
    return tokens


def _parse_layer(spec: str, segment: str, start: int, position: int) -> _Token:
    stripped = segment.strip()
    column = start + len(segment) - len(segment.lstrip())
    if not stripped:
        if position == 1:
            raise SpecTokenError(
                spec, start + len(segment), 2, f"missing layer before '->'; {_EXPECTED_LAYER}"
            )
        raise SpecTokenError(spec, start - 2, 2, f"missing layer after '->'; {_EXPECTED_LAYER}")
    name_match = re.match(r"[A-Za-z][A-Za-z0-9_]*", stripped, re.ASCII)
    if name_match is None:
        raise SpecTokenError(
            spec, column, len(stripped), f"{stripped!r} is not a layer name; {_EXPECTED_LAYER}"
        )
    name = name_match.group()
    rest = stripped[name_match.end() :]
    paren = column + name_match.end() + len(rest) - len(rest.lstrip())
    rest = rest.lstrip()
    args: tuple[_Arg, ...] = ()
    if rest:
        if rest[0] != "(":
            raise SpecTokenError(
                spec, paren, len(rest), f"expected '(' or '->' after {name}, got {rest[0]!r}"
            )
        close = rest.find(")")
        if close == -1:
            raise SpecTokenError(spec, paren, len(rest), f"missing ')' closing the arguments of {name}")
        trailing = rest[close + 1 :]
        if trailing.strip():
            extra = paren + close + 1 + len(trailing) - len(trailing.lstrip())
            raise SpecTokenError(spec, extra, len(trailing.strip()), f"unexpected text after {name}(...)")
        args = _parse_args(spec, rest[1:close], paren + 1, name)
    return _Token(name, stripped, column, position, args)


def _parse_args(spec: str, inner: str, start: int, name: str) -> tuple[_Arg, ...]:
    if not inner.strip():
        return ()
    args = []
    for piece in inner.split(","):
        column = start + len(piece) - len(piece.lstrip())
        text = piece.strip()
        if not text:
            raise SpecTokenError(spec, column, 1, f"empty argument in {name}(...)")
        key, eq, value = text.partition("=")
        if eq:
            key, value = key.strip(), value.strip()
            if not re.fullmatch(r"[A-Za-z_]+", key, re.ASCII) or not value:
                raise SpecTokenError(
                    spec, column, len(text), f"expected key=value in {name}(...), got {text!r}"
                )
            args.append(_Arg(key.lower(), value, column, text))
        else:
            args.append(_Arg(None, text, column, text))
        start += len(piece) + 1
    return tuple(args)


class _Layer:
    """A token bound to its kind, with typed argument readers that point at the argument on error."""

    def __init__(self, spec: str, token: _Token) -> None:
        self.spec = spec
        self.token = token
        key = token.name.lower()
        if key not in _KINDS:
            near = [_KINDS[k].name for k in closest(key, _KINDS)]
            hint = f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
            self._fail(f"unknown layer {token.name!r}{hint}; {_EXPECTED_LAYER}")
        self.key = key
        self.kind = _KINDS[key]
        self.args = self._bind()

    @property
    def label(self) -> str:
        return f"{self.token.text} at position {self.token.position}"

    def _fail(self, problem: str, arg: _Arg | None = None) -> NoReturn:
        if arg is None:
            raise SpecTokenError(self.spec, self.token.column, len(self.token.text), problem)
        raise SpecTokenError(self.spec, arg.column, len(arg.text), problem)

    def _bind(self) -> dict[str, _Arg]:
        kind = self.kind
        aliases = {p: p for p in kind.params}
        aliases.update({short: long for short, long in _SHORT_KEYS.items() if long in kind.params})
        aliases.update(kind.aliases)
        usage = f"e.g. {kind.example}"
        bound: dict[str, _Arg] = {}
        seen_keyword = False
        for i, arg in enumerate(self.token.args):
            if arg.key is None:
                if seen_keyword:
                    self._fail(f"positional argument after a keyword in {kind.name}(...); {usage}", arg)
                if i >= kind.positional:
                    what = (
                        f"at most {kind.positional} positional argument(s)" if kind.params else "no arguments"
                    )
                    self._fail(f"{kind.name} takes {what}; {usage}", arg)
                param = kind.params[i]
            else:
                seen_keyword = True
                if arg.key not in aliases:
                    near = closest(arg.key, aliases)
                    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
                    keys = ", ".join(sorted(aliases)) or "none"
                    self._fail(f"{kind.name} has no argument {arg.key!r}{hint} (it takes: {keys})", arg)
                param = aliases[arg.key]
            if param in bound:
                self._fail(f"{kind.name} got {param!r} twice", arg)
            bound[param] = arg
        missing = [p for p in kind.params[: kind.required] if p not in bound]
        if missing:
            self._fail(f"{kind.name} needs {' and '.join(missing)}; {usage}")
        return bound

    def integer(self, param: str, default: int, minimum: int = 1) -> int:
        arg = self.args.get(param)
        if arg is None:
            return default
        return self._integer(arg.value, arg, f"{param} of {self.kind.name}", minimum)

    def _integer(self, text: str, arg: _Arg, what: str, minimum: int) -> int:
        if not re.fullmatch(rf"[0-9]{{1,{_MAX_DIGITS}}}", text, re.ASCII):
            self._fail(f"{what} must be a whole number (at most {_MAX_DIGITS} digits), got {text!r}", arg)
        value = int(text)
        if value < minimum:
            self._fail(f"{what} must be at least {minimum}, got {value}", arg)
        return value

    def size(self, param: str, dims: tuple[int, ...]) -> tuple[int, ...]:
        """Read a required ``AxB[xC]``; ``dims`` are the accepted numbers of parts; one part means a square."""
        arg = self.args[param]
        parts = re.split(r"[xX]", arg.value)
        if len(parts) not in dims:
            forms = " or ".join("x".join("N" * n) for n in dims)
            self._fail(f"{param} of {self.kind.name} must look like {forms}, got {arg.value!r}", arg)
        values = tuple(self._integer(p, arg, f"{param} of {self.kind.name}", 1) for p in parts)
        return values * 2 if len(values) == 1 else values

    def fraction(self, param: str, default: float, maximum: float | None = None) -> float:
        arg = self.args.get(param)
        if arg is None:
            return default
        if not re.fullmatch(r"(?:[0-9]{1,9}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})", arg.value, re.ASCII):
            self._fail(f"{param} of {self.kind.name} must be a decimal number, got {arg.value!r}", arg)
        value = float(arg.value)
        if maximum is not None and value > maximum:
            self._fail(f"{param} of {self.kind.name} must be at most {maximum}, got {value}", arg)
        return value

    def padding(self, kernel: tuple[int, int], dilation: int) -> tuple[int, int]:
        arg = self.args.get("padding")
        if arg is None or arg.value.lower() == "valid":
            return (0, 0)
        if arg.value.lower() == "same":
            spans = [dilation * (k - 1) + 1 for k in kernel]
            if any(span % 2 == 0 for span in spans):
                self._fail(
                    f"p=same needs an odd kernel span dilation*(K-1)+1, got {spans[0]}x{spans[1]}", arg
                )
            return (same_padding(kernel[0], dilation), same_padding(kernel[1], dilation))
        value = self._integer(arg.value, arg, f"padding of {self.kind.name} (same, valid or a number)", 0)
        return (value, value)


@dataclass
class _Planned:
    """One module to create: its name prefix, how to make it, its parameters, output shape and stride."""

    prefix: str
    make: Callable[[], nn.Module]
    params: int
    shape: tuple[int, ...]
    stride: int = 1


def _plan(
    spec: str, act: str, pool: str, input_size: tuple[int, int, int] | None
) -> tuple[tuple[int, int, int], list[_Planned]]:
    """Parse ``spec`` and work out every module with its shape, before allocating any weights."""
    layers = [_Layer(spec, token) for token in _tokenize(spec)]
    if layers[0].key != "input":
        layers[0]._fail(f"a spec starts with Input(CxHxW) or Input(HxW), got {layers[0].token.text!r}")
    for layer in layers[1:]:
        if layer.key == "input":
            layer._fail("Input may appear only once, as the first layer")
    size = layers[0].size("shape", (2, 3))
    input_shape = (1, *size) if len(size) == 2 else size
    shape: tuple[int, ...] = input_size or input_shape
    weighted = [i for i, layer in enumerate(layers) if layer.key in _WEIGHTED]
    last_weighted = weighted[-1] if weighted else -1
    default_act = _ACTIVATIONS[act][1]
    act_after = -1  # index of the layer the pending default activation follows
    plan: list[_Planned] = []
    total = 0
    for i, layer in enumerate(layers[1:], start=1):
        next_key = layers[i + 1].key if i + 1 < len(layers) else None
        steps = _layer_steps(layer, shape, pool, bias=next_key != "bn")
        if layer.key in _WEIGHTED and i != last_weighted and default_act is not None:
            after = i + 2 if next_key == "bn" else i + 1
            if not (after < len(layers) and layers[after].key in _ACTIVATIONS):
                act_after = after - 1
        if i == act_after:
            steps.append(_Planned("act", default_act, 0, steps[-1].shape))
        for step in steps:
            total += step.params
            if total > MAX_PARAMS:
                layer._fail(f"{layer.label}: the network would exceed {MAX_PARAMS:,} parameters")
            plan.append(step)
        shape = steps[-1].shape if steps else shape
    return input_shape, plan


def _spatial(layer: _Layer, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        layer._fail(
            f"{layer.label}: needs a feature map, but the input is already flat ({shape[0]} features)"
        )
    return shape


def _out_size(
    layer: _Layer,
    shape: tuple[int, int, int],
    kernel: tuple[int, int],
    stride: int,
    padding: tuple[int, int],
    dilation: int,
    window: str,
) -> tuple[int, int]:
    sizes = []
    for size, k, p in zip(shape[1:], kernel, padding):
        try:
            if window == "kernel":
                sizes.append(conv_output_size(size, k, stride, p, dilation))
            else:
                sizes.append(pool_output_size(size, k, stride, p))
        except ValueError:
            if window != "kernel" and p > k // 2:
                layer._fail(
                    f"{layer.label}: padding {p} is more than half the {kernel[0]}x{kernel[1]} window"
                )
            padded = f" (padded by {padding[0]}x{padding[1]})" if any(padding) else ""
            spans = f" spanning {dilation * (kernel[0] - 1) + 1}x{dilation * (kernel[1] - 1) + 1}"
            dilated = f" at dilation {dilation}{spans}" if dilation > 1 else ""
            layer._fail(
                f"{layer.label}: input {shape[1]}x{shape[2]}{padded} is smaller than the "
                f"{kernel[0]}x{kernel[1]} {window}{dilated}"
            )
    return sizes[0], sizes[1]


def _layer_steps(layer: _Layer, shape: tuple[int, ...], pool: str, bias: bool) -> list[_Planned]:
    key = layer.key
    if key in ("conv", "dwconv"):
        c_in, _, _ = _spatial(layer, shape)
        kernel = layer.size("kernel", (1, 2))
        c_out = layer.integer("channels", c_in) if key == "conv" else c_in
        groups = layer.integer("groups", 1) if key == "conv" else c_in
        stride, dilation = layer.integer("stride", 1), layer.integer("dilation", 1)
        if c_in % groups or c_out % groups:
            layer._fail(
                f"{layer.label}: groups={groups} must divide the {c_in} input and {c_out} output channels"
            )
        padding = layer.padding(kernel, dilation)
        h, w = _out_size(layer, _spatial(layer, shape), kernel, stride, padding, dilation, "kernel")
        params = c_out * (c_in // groups) * kernel[0] * kernel[1] + (c_out if bias else 0)

        def make() -> nn.Module:
            return nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=bias)

        return [_Planned(key, make, params, (c_out, h, w), stride)]
    if key in ("pool", "maxpool", "avgpool"):
        c, _, _ = _spatial(layer, shape)
        kind = {"pool": pool, "maxpool": "max", "avgpool": "avg"}[key]
        if key == "pool":
            kernel, stride, pad = (2, 2), 2, 0
        else:
            kernel = layer.size("kernel", (1, 2))
            stride = layer.integer("stride", kernel[0])
            pad = layer.integer("padding", 0, minimum=0)
        h, w = _out_size(layer, _spatial(layer, shape), kernel, stride, (pad, pad), 1, "window")
        cls = nn.MaxPool2d if kind == "max" else nn.AvgPool2d
        return [_Planned("pool", lambda: cls(kernel, stride, pad), 0, (c, h, w), stride)]
    if key == "gap":
        c, _, _ = _spatial(layer, shape)
        return [
            _Planned("gap", lambda: nn.AdaptiveAvgPool2d(1), 0, (c, 1, 1), 1),
            _Planned("flatten", nn.Flatten, 0, (c,), 1),
        ]
    if key == "fc":
        units = layer.integer("features", 1)
        steps = []
        if len(shape) == 3:
            shape = (shape[0] * shape[1] * shape[2],)
            steps.append(_Planned("flatten", nn.Flatten, 0, shape, 1))
        n_in = shape[0]
        steps.append(_Planned("fc", lambda: nn.Linear(n_in, units), n_in * units + units, (units,), 1))
        return steps
    if key == "bn":
        c = shape[0]
        cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return [_Planned("bn", lambda: cls(c), 2 * c, shape, 1)]
    if key == "dropout":
        p = layer.fraction("p", 0.5, 1.0)
        return [_Planned("drop", lambda: nn.Dropout(p), 0, shape, 1)]
    if key == "leakyrelu":
        slope = layer.fraction("slope", 0.01, float(10**9))
        return [_Planned("act", lambda: nn.LeakyReLU(slope), 0, shape, 1)]
    factory = _ACTIVATIONS[key][1]
    return [] if factory is None else [_Planned("act", factory, 0, shape, 1)]


class SpecNet(ClassifierModel):
    """A network built from an arrow-notation spec (see the module docstring for the grammar).

    Speaks the feature contract of :class:`ClassifierModel`: ``forward_features`` runs every layer before
    the first flattening (``GAP`` or the first ``FC``), ``forward_head`` the rest; the classifier is the
    last ``FC`` (``classifier_name``, e.g. ``"fc3"``). As in timm, ``num_features`` is the channel count of
    the last feature map and ``head_hidden_size`` the width ``forward_head(..., pre_logits=True)`` returns,
    the classifier's input (84 for LeNet-5, whose head has hidden FCs; equal to ``num_features`` after GAP).
    ``feature_info`` has one entry per stage: a stage starts at a downsampling layer (pooling, or a
    convolution with stride > 1) and ends just before the next one, so each entry is the last map at its
    reduction (the stride product); a spec without downsampling has one stage at reduction 1.

    Args:
        spec: the arrow-notation string, e.g. ``"Input(32x32) -> Conv(5x5,6) -> Pool -> FC(10)"``.
        act: default activation after each Conv/DWConv/FC but the last (``"relu"``, ``"tanh"``, ...,
            ``"identity"`` for none).
        pool: what the bare ``Pool`` token means: ``"max"`` or ``"avg"`` (2x2, stride 2).
        input_size: ``(C, H, W)`` replacing the spec's ``Input(...)``.
        num_classes: outputs of the last ``FC`` replacing the spec's (``0``: no classifier).

    Raises:
        SpecTokenError: the spec cannot be parsed or its shapes do not work out.
        ConfigError: a bad ``act``, ``pool``, ``input_size`` or ``num_classes``.

    Shape:
        - Input: ``(N, *input_size)``
        - Output: ``(N, num_classes)`` (or the last map when the spec never flattens).
    """

    def __init__(
        self,
        spec: str,
        *,
        act: str = "relu",
        pool: str = "max",
        input_size: tuple[int, int, int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(act, str) or act.lower() not in _ACTIVATIONS:
            raise ConfigError(f"act must be one of {', '.join(sorted(_ACTIVATIONS))}, got {act!r}")
        if pool not in ("max", "avg"):
            raise ConfigError(f"pool must be 'max' or 'avg', got {pool!r}")
        if input_size is not None:
            input_size = tuple(input_size)
            if len(input_size) != 3 or not all(isinstance(v, int) and v >= 1 for v in input_size):
                raise ConfigError(f"input_size must be three positive integers (C, H, W), got {input_size!r}")
        if not isinstance(spec, str):
            raise SpecError(f"a spec is a string, got {type(spec).__name__}")
        spec_input, plan = _plan(spec, act.lower(), pool, input_size)
        self.spec = spec
        self.input_size = input_size or spec_input
        names = self._add_modules(plan)
        split = next((i for i, step in enumerate(plan) if step.prefix in ("gap", "flatten")), len(plan))
        self.feature_layers = tuple(names[:split])
        self.head_layers = tuple(names[split:])
        fcs = [n for n, step in zip(names, plan) if step.prefix == "fc"]
        self.classifier_name = fcs[-1] if fcs else ""
        self.num_features = plan[split - 1].shape[0] if split else self.input_size[0]
        if fcs:
            self.head_hidden_size = self.get_submodule(fcs[-1]).in_features
            self.num_classes = self.get_submodule(fcs[-1]).out_features
        else:
            self.head_hidden_size = self.num_classes = (plan[-1].shape if plan else self.input_size)[0]
        self.feature_info = _stages(names[:split], plan[:split])
        self.default_cfg = {"architecture": "spec", "spec": spec, "input_size": self.input_size}
        if num_classes is not None:
            self._override_classes(num_classes)

    def _add_modules(self, plan: list[_Planned]) -> list[str]:
        counts: dict[str, int] = {}
        names = []
        for step in plan:
            counts[step.prefix] = counts.get(step.prefix, 0) + 1
            name = step.prefix if step.prefix in ("gap", "flatten") else f"{step.prefix}{counts[step.prefix]}"
            self.add_module(name, step.make())
            names.append(name)
        return names

    def _override_classes(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        if not self.classifier_name:
            raise ConfigError(f"num_classes needs a spec with an FC layer to replace, got {self.spec!r}")
        if num_classes != self.num_classes:
            self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last ``FC`` with a fresh ``nn.Linear(head_hidden_size, num_classes)`` (``0``: identity).

        Args:
            num_classes: outputs of the new classifier.

        Raises:
            ConfigError: the spec has no ``FC`` layer.
        """
        if not self.classifier_name:
            raise ConfigError(f"the spec has no FC layer to replace: {self.spec!r}")
        old = self.get_submodule(self.classifier_name)
        new = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(old, nn.Linear):
            new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        setattr(self, self.classifier_name, new)
        self.num_classes = num_classes

    def head_modules(self) -> list[str]:
        """Every module after the features (flatten, hidden FCs, classifier): ``features_only`` drops them."""
        return list(self.head_layers)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last map of every stage, in the order of ``feature_info``.

        Shape:
            - Input: ``(N, *input_size)``
            - Output: list of ``(N, feature_info[i]["num_chs"], H_i, W_i)``.
        """
        ends = set(self.feature_info.module_names())
        maps = []
        for name in self.feature_layers:
            x = getattr(self, name)(x)
            if name in ends:
                maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer before the first flattening.

        Shape:
            - Input: ``(N, *input_size)``
            - Output: ``(N, C', H', W')``, the last map.
        """
        for name in self.feature_layers:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Flatten (or global-pool), hidden FCs, classifier; ``pre_logits`` stops before the classifier.

        Shape:
            - Input: ``(N, C', H', W')`` from :meth:`forward_features`
            - Output: ``(N, num_classes)``, or ``(N, head_hidden_size)`` with ``pre_logits=True``.
        """
        for name in self.head_layers:
            if pre_logits and name == self.classifier_name:
                break
            x = getattr(self, name)(x)
        return x


def _stages(names: list[str], plan: list[_Planned]) -> FeatureInfo:
    """One entry per stage: from a downsampling layer to just before the next (or the end)."""
    info = FeatureInfo()
    if not plan:
        return info
    starts = [i for i, step in enumerate(plan) if step.stride > 1] or [0]
    ends = [start - 1 for start in starts[1:]] + [len(plan) - 1]
    for start, end in zip(starts, ends):
        reduction = math.prod(step.stride for step in plan[: start + 1])
        info.append({"num_chs": plan[end].shape[0], "reduction": reduction, "module": names[end]})
    return info


def build(
    spec: str,
    *,
    act: str = "relu",
    pool: str = "max",
    input_size: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> SpecNet:
    """Build the network an arrow-notation spec describes (grammar in :mod:`cnnkit.models.spec`).

    Args:
        spec: e.g. ``"Input(32x32) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(120) -> FC(84)
            -> FC(10)"`` (the page's LeNet-5, 61,706 parameters).
        act: default activation after each Conv/DWConv/FC except the last (``"relu"``, ``"tanh"``, ...).
        pool: ``"max"`` or ``"avg"``: what the bare ``Pool`` token builds.
        input_size: ``(C, H, W)`` replacing the spec's ``Input(...)``.
        num_classes: outputs of the last ``FC`` replacing the spec's.

    Returns:
        A :class:`SpecNet`.

    Raises:
        SpecTokenError: a bad spec; the message shows the spec with a caret under the bad token.
        ConfigError: a bad keyword argument.

    Shape:
        - Input: ``(N, C, H, W)`` of the spec's ``Input(CxHxW)``
        - Output: ``(N, units of the last FC)``

    Example:
        >>> net = build("Input(32x32) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(120) -> FC(84) -> FC(10)")
        >>> sum(p.numel() for p in net.parameters())
        61706
    """
    return SpecNet(spec, act=act, pool=pool, input_size=input_size, num_classes=num_classes)
