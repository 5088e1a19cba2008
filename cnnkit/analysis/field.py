"""Receptive field and jump of a tensor, and how graph operations change them.

A :class:`Field` describes every unit of a tensor with respect to the network input: for each spatial axis
of the input (height, width, ...) a :class:`Reach` gives, unit by unit, the interval of input pixels that
can change the unit, plus the tensor dimension where that input axis now lives (permutes and reshapes move
it). A global field marks a tensor whose units each depend on the whole input.

The receptive field ``rf`` of a tensor is the widest unit's interval: ``max over units of
(last - first + 1)`` (border units, which padding or clamping cut short, aside). Strided layers give every
unit the same width, so one number describes them, and the reference page's rule (section "Receptive
Field", with the effective kernel ``d*(k-1)+1`` of a dilated layer) holds:
``rf_out = rf_in + d*(k-1)*jump_in``, ``jump_out = jump_in*s``. Upsampling breaks that: after a 2x bilinear
upsampling, neighbouring units read input pairs that overlap or not, so units of one tensor differ in
width, and a second upsampling or a strided layer can pick the wide or the narrow ones. A :class:`Reach`
therefore keeps the interval of each phase of the repeating pattern (unit ``o`` and unit ``o + period``
see the same width, ``shift`` input pixels further), in absolute input positions (padding, crops and taps
included), and each op maps it exactly (:func:`read`):

- window op (conv, pool) with kernel ``k``, stride ``s``, dilation ``d``, padding ``p``: output ``o``
  reads inputs ``s*o - p + j*d`` for the taps ``j < k``;
- transposed conv: output ``o`` reads input ``i`` when ``o = i*s + j*d - p`` for a tap ``j``;
- resizing (``nn.Upsample``, ``F.interpolate``): output ``o`` reads the input pixels PyTorch's
  interpolation kernel weights: nearest 1, (bi/tri)linear 2 around ``(o + 1/2)*scale - 1/2`` (1 when that
  lands on a pixel), bicubic 4 (likewise 1); an antialiased shrink stretches the kernel by the ratio;
- adaptive pools and pixel (un)shuffle: output ``o`` of ``L -> O`` reads ``[floor(o*L/O), ceil((o+1)*L/O))``;
- slicing, ``narrow`` and padding shift (and a slice step strides) the units;
- several inputs (add, mul, cat, ...): each unit sees the union of what the inputs' units at its position
  see; a global input makes the output global (a map gated by a global value, as in squeeze-and-excitation,
  keeps its spatial axes so that later strides still multiply its jump);
- a window that mixes a spatial axis wholesale (it sits in the channel dim of a conv, a linear layer
  reads it, a reduction runs over it) makes the output global, and everything after it stays global.

Jumps are exact fractions, so upsampling after downsampling returns to whole numbers. Approximations:
``flip``, ``roll`` and ``split``/``chunk`` along a spatial dim keep the field as it is (widths stay exact;
positions are not moved, which matters only if the result is later merged with another branch); inputs
whose jumps differ (resizing to a size that is not a whole multiple, broadcasting a size-1 axis) merge to
the widest input's field, centred on the input with the largest jump; a pattern longer than
:data:`MAX_PERIOD` units is widened to the envelope of its phases (which only over-states the field).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial

from cnnkit.geometry import same_padding

Span = tuple[Fraction, Fraction] | None
"""First and last input pixel a unit sees along one axis, or ``None`` when it sees none (a transposed
conv's output that no tap reaches)."""

MAX_PERIOD = 1024
"""Longest repeating pattern of units tracked exactly; a longer one is widened to its envelope."""


@dataclass(frozen=True)
class Reach:
    """What each unit of a tensor sees along one input axis.

    Units repeat with period ``P = len(spans)``: unit ``o = q*P + r`` sees the input pixels
    ``spans[r][0] + q*shift`` to ``spans[r][1] + q*shift``.

    Args:
        spans: the span of units ``0 .. P-1``, in absolute input positions.
        shift: input pixels between unit ``o`` and unit ``o + P`` (``P * jump``).
    """

    spans: tuple[Span, ...]
    shift: Fraction

    @property
    def jump(self) -> Fraction:
        """Input pixels between neighbouring units, on average over a period."""
        return Fraction(self.shift) / len(self.spans)

    @property
    def rf(self) -> Fraction:
        """Width of the widest unit, in input pixels (0 when no unit sees anything)."""
        return max((last - first + 1 for first, last in filter(None, self.spans)), default=Fraction(0))

    def span(self, unit: int) -> Span:
        """Input pixels unit ``unit`` sees (any integer: the pattern continues past the tensor's borders)."""
        q, r = divmod(unit, len(self.spans))
        span = self.spans[r]
        return None if span is None else (span[0] + q * self.shift, span[1] + q * self.shift)


def identity_reach() -> Reach:
    """Reach of the network input: unit ``o`` sees input pixel ``o``."""
    return Reach(((Fraction(0), Fraction(0)),), Fraction(1))


def coarse(reach: Reach) -> Reach:
    """Period-1 envelope: unit ``o`` sees ``[o*jump + min_r(first_r - r*jump), o*jump + max_r(last_r - r*jump)]``."""
    jump = reach.jump
    live = [(r, s) for r, s in enumerate(reach.spans) if s is not None]
    if not live:
        return Reach((None,), jump)
    first = min(s[0] - r * jump for r, s in live)
    last = max(s[1] - r * jump for r, s in live)
    return Reach(((first, last),), jump)


def read(
    reach: Reach,
    period: int,
    advance: int,
    first: Sequence[int],
    last: Sequence[int],
    step: int = 1,
) -> Reach:
    """Reach after an op whose output unit ``o = q*period + r`` reads the input units
    ``first[r] + q*advance``, ``+ step``, ..., up to ``last[r] + q*advance`` (none when ``first[r] > last[r]``).

    Each output unit sees the union of what the units it reads see: since spans never move left as the
    unit index grows, that is from the first span of the first tap that sees anything to the last span of
    the last such tap. The output pattern repeats once both the op's pattern (``period`` outputs,
    ``advance`` inputs) and the input's (``P`` units) do: every ``period * P/gcd(P, advance)`` outputs.

    Args:
        reach: the input's reach along the axis.
        period: outputs per repetition of the op's index map (1 for a conv, ``s`` for a transposed conv).
        advance: inputs the map moves per repetition (``s`` for a conv, 1 for a transposed conv).
        first: first input unit read by outputs ``0 .. period-1``.
        last: last input unit read by outputs ``0 .. period-1``.
        step: distance between the units read (a dilation).

    Returns:
        The output's reach.
    """
    p_in = len(reach.spans)
    repeat = p_in // math.gcd(p_in, advance)
    if period * repeat > MAX_PERIOD:
        reach, p_in, repeat = coarse(reach), 1, 1
    spans = []
    for o in range(period * repeat):
        q, r = divmod(o, period)
        spans.append(_union_of_taps(reach, first[r] + q * advance, last[r] + q * advance, step))
    return Reach(tuple(spans), reach.shift * Fraction(repeat * advance, p_in))


def _union_of_taps(reach: Reach, first: int, last: int, step: int) -> Span:
    """Span of the union over the taps ``first, first + step, ... <= last`` (at most ``P`` taps are tried
    from each end: the phases repeat, so if those see nothing, none does)."""
    if first > last:
        return None
    taps = int((last - first) // step) + 1
    tries = min(taps, len(reach.spans))
    low = next((s for s in (reach.span(first + j * step) for j in range(tries)) if s is not None), None)
    if low is None:
        return None
    end = first + (taps - 1) * step
    high = next(s for s in (reach.span(end - j * step) for j in range(tries)) if s is not None)
    return (low[0], high[1])


def union(reaches: Sequence[Reach]) -> Reach:
    """Reach of an op whose unit ``o`` reads unit ``o`` of each input: the union of their spans.

    The pattern repeats every ``lcm`` of the periods. Inputs whose jumps differ have no common pattern:
    the result is then the widest ``rf`` centred on the envelope of the input with the largest jump.
    """
    if len(reaches) == 1:
        return reaches[0]
    jump = reaches[0].jump
    period = math.lcm(*(len(r.spans) for r in reaches))
    if any(r.jump != jump for r in reaches) or period > MAX_PERIOD:
        if all(r.jump == jump for r in reaches):
            return union([coarse(r) for r in reaches])
        widest = max(r.rf for r in reaches)
        anchor = coarse(max(reaches, key=lambda r: r.jump))
        if anchor.spans[0] is None:
            return Reach((None,), anchor.shift)
        centre = (anchor.spans[0][0] + anchor.spans[0][1]) / 2
        return Reach(((centre - (widest - 1) / 2, centre + (widest - 1) / 2),), anchor.shift)
    spans = []
    for o in range(period):
        live = [s for s in (r.span(o) for r in reaches) if s is not None]
        spans.append((min(s[0] for s in live), max(s[1] for s in live)) if live else None)
    return Reach(tuple(spans), jump * period)


@dataclass(frozen=True)
class Field:
    """Reach, jump and location of each input spatial axis in one tensor.

    Build a local field with :meth:`local`; its jumps are its reaches' jumps.

    Args:
        reach: what each unit sees, per input spatial axis (empty when global).
        jump: distance in input pixels between neighbouring units, per input spatial axis. A global
            field keeps one number, the largest jump on the way to it, for reporting (a gated map keeps one
            per axis).
        axes: the tensor dimension holding each input spatial axis (empty when global, unless gated).
        is_global: every unit depends on the whole input.
    """

    reach: tuple[Reach, ...]
    jump: tuple[Fraction, ...]
    axes: tuple[int, ...]
    is_global: bool = False

    @staticmethod
    def local(reach: Sequence[Reach], axes: Sequence[int]) -> Field:
        """A field that is not global, from the reach of each spatial axis and where it lives."""
        return Field(tuple(reach), tuple(r.jump for r in reach), tuple(axes))

    @property
    def rf(self) -> tuple[Fraction, ...]:
        """Receptive field (the widest unit) per input spatial axis; empty when global."""
        return tuple(r.rf for r in self.reach)

    def moved(self, axes: Sequence[int]) -> Field:
        """The same field with the spatial axes at new tensor dimensions."""
        return Field(self.reach, self.jump, tuple(axes), self.is_global)

    def made_global(self, jump_factor: Fraction | int = 1) -> Field:
        """The global field reached from this one; its jump is this one's largest times ``jump_factor``."""
        return Field((), (max(self.jump, default=Fraction(1)) * jump_factor,), (), True)

    def mapped(self, first_dim: int, reach_of: Sequence[Callable[[Reach], Reach]]) -> Field:
        """This field with the reach of the axis at tensor dim ``first_dim + j`` replaced by ``reach_of[j](reach)``."""
        reach = list(self.reach)
        for i, axis in enumerate(self.axes):
            offset = axis - first_dim
            if 0 <= offset < len(reach_of):
                reach[i] = reach_of[offset](reach[i])
        return Field.local(reach, self.axes)


MaybeField = Field | None
"""A field, or ``None`` for a tensor that does not depend on the network input at all (a constant)."""


def input_field(ndim: int) -> Field:
    """Field of the network input ``(N, C, *spatial)``: unit ``o`` sees input pixel ``o`` on every spatial axis.

    An input without spatial axes (``ndim < 3``, e.g. ``(N, features)``) is global from the start.
    """
    if ndim < 3:
        return Field((), (Fraction(1),), (), True)
    return Field.local([identity_reach()] * (ndim - 2), range(2, ndim))


def reported_rf(field: MaybeField) -> int | str:
    """Receptive field as reported: the widest unit's side in whole pixels (largest over the axes),
    ``"global"``, or 0 for a constant."""
    if field is None:
        return 0
    if field.is_global:
        return "global"
    return math.ceil(max(field.rf))


def reported_jump(field: MaybeField) -> int | float:
    """Jump as reported: the largest over the spatial axes; an int unless upsampling made it fractional."""
    if field is None:
        return 1
    jump = max(field.jump)
    return int(jump) if jump.denominator == 1 else float(jump)


def merge(fields: Sequence[MaybeField]) -> MaybeField:
    """Field of an op with several tensor inputs (add, mul, cat, where, ...).

    Per axis the :func:`union` of the inputs' reaches; global if any input is global or the inputs disagree
    on where the spatial axes are; ``None`` if no input depends on the network input. The caller expresses
    each input's axes in the output's dimensions first (see :func:`broadcast`).
    """
    live = [f for f in fields if f is not None]
    if not live:
        return None
    axed = [f for f in live if f.axes]
    same_axes = bool(axed) and all(f.axes == axed[0].axes for f in axed)
    if any(f.is_global for f in live) or not same_axes or len(axed) < len(live):
        if same_axes:
            # A map gated by a global value (squeeze-and-excitation): every unit now sees the whole input,
            # but the map keeps its spatial axes, so later strides still multiply its jump.
            jump = tuple(max(f.jump[i] for f in axed) for i in range(len(axed[0].axes)))
            return Field((), jump, axed[0].axes, True)
        return Field((), (max(max(f.jump) for f in live),), (), True)
    reach = [union([f.reach[i] for f in live]) for i in range(len(live[0].axes))]
    return Field.local(reach, live[0].axes)


def broadcast(field: MaybeField, in_ndim: int, out_ndim: int) -> MaybeField:
    """Express ``field`` of an ``in_ndim`` tensor in the dims of a broadcast ``out_ndim`` result (right-aligned)."""
    if field is None or field.is_global or in_ndim == out_ndim:
        return field
    return field.moved(a + out_ndim - in_ndim for a in field.axes)


def constant_along(field: Field, dims: Sequence[int]) -> Field:
    """A field broadcast along the size-1 tensor dims ``dims``: every unit there sees what unit 0 sees."""
    reach = [Reach((r.span(0),), Fraction(0)) if a in dims else r for r, a in zip(field.reach, field.axes)]
    return Field.local(reach, field.axes)


def _padding(padding: int | str, kernel: int, dilation: int) -> int:
    """Left padding of a conv: ``"same"`` pads ``floor(d*(k-1)/2)`` before (PyTorch's rule), ``"valid"`` 0."""
    if padding == "same":
        return same_padding(kernel, dilation)
    return 0 if padding == "valid" else int(padding)


def window(
    field: MaybeField,
    first_dim: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    padding: Sequence[int] | str = 0,
) -> MaybeField:
    """Field after a sliding-window op (conv, pool) over the dims ``first_dim, first_dim + 1, ...``.

    Output ``o`` reads inputs ``s*o - p + j*d`` for ``j < k``, so for units of equal width
    ``rf_out = rf_in + d*(k-1)*jump_in``, and ``jump_out = jump_in*s`` on each axis the window slides over.
    The window mixes everything along the dims before ``first_dim`` other than the batch dim (channels),
    so a spatial axis living there makes the output global.

    Args:
        field: the input's field.
        first_dim: tensor dim of the window's first spatial axis.
        kernel / stride / dilation: per spatial axis of the window.
        padding: per axis, or ``"same"`` / ``"valid"`` (a conv's string padding).

    Shape:
        - Input: ``(N, C, *spatial)`` with ``len(kernel)`` spatial dims from ``first_dim`` on.
    """
    if field is None or (field.is_global and not field.axes):
        return field
    n = len(kernel)
    pads = [
        _padding(padding if isinstance(padding, str) else padding[j], kernel[j], dilation[j])
        for j in range(n)
    ]
    if field.is_global:  # a gated map: only its jump still changes
        jump = list(field.jump)
        for i, axis in enumerate(field.axes):
            offset = axis - first_dim
            if 0 <= offset < n:
                jump[i] = jump[i] * Fraction(stride[offset])
        return Field((), tuple(jump), field.axes, True)
    if any(0 < axis < first_dim for axis in field.axes):
        return field.made_global()
    maps = [
        partial(read, period=1, advance=s, first=[-p], last=[-p + d * (k - 1)], step=d)
        for k, s, d, p in zip(kernel, stride, dilation, pads)
    ]
    return field.mapped(first_dim, maps)


def transposed_taps(
    kernel: int, stride: int, dilation: int, padding: int
) -> tuple[list[int], list[int], int]:
    """Index map of a transposed convolution: ``(first, last, step)`` of the inputs each of the ``stride``
    output phases reads (see :func:`read`).

    Output ``o`` reads input ``i = (o + p - j*d)/s`` for the taps ``j`` where that is a whole number, i.e.
    the taps of one residue class of ``j*d mod s``; within a class the inputs are ``d/gcd(d, s)`` apart.
    A phase no tap reaches gets ``first > last``.
    """
    first, last = [], []
    for r in range(stride):
        inputs = [
            (r + padding - j * dilation) // stride
            for j in range(kernel)
            if (r + padding - j * dilation) % stride == 0
        ]
        first.append(min(inputs, default=1))
        last.append(max(inputs, default=0))
    return first, last, dilation // math.gcd(dilation, stride)


def transposed_window(
    field: MaybeField,
    first_dim: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    padding: Sequence[int],
) -> MaybeField:
    """Field after a transposed convolution: output ``o`` reads input ``i`` when ``o = i*s + j*d - p``
    (see :func:`transposed_taps`); ``jump /= s``.

    Shape:
        - Input: ``(N, C, *spatial)`` with ``len(kernel)`` spatial dims from ``first_dim`` on.
    """
    if field is None or field.is_global:
        return field
    if any(0 < axis < first_dim for axis in field.axes):
        return field.made_global()
    maps = []
    for j in range(len(kernel)):
        first, last, step = transposed_taps(kernel[j], stride[j], dilation[j], padding[j])
        maps.append(partial(read, period=stride[j], advance=1, first=first, last=last, step=step))
    return field.mapped(first_dim, maps)


INTERPOLATION_TAPS = {
    "nearest": 1,
    "nearest-exact": 1,
    "linear": 2,
    "bilinear": 2,
    "trilinear": 2,
    "bicubic": 4,
}
"""Input pixels per side that one output pixel of each interpolation mode reads (between pixels)."""


def resize_taps(
    ratio: Fraction, mode: str, align_corners: bool = False, antialias: bool = False
) -> tuple[int, int, list[int], list[int]]:
    """Index map of a resize: ``(period, advance, first, last)`` for :func:`read`.

    ``ratio`` is PyTorch's source step per output pixel (``in/out``, or ``1/scale_factor`` when that is
    given and not recomputed; ``(in-1)/(out-1)`` with ``align_corners``). Output ``o`` samples
    ``src = o*ratio`` (``align_corners`` and nearest), ``(o + 1/2)*ratio`` (nearest-exact) or
    ``(o + 1/2)*ratio - 1/2`` (linear and cubic modes). Nearest reads ``floor(src)``; linear
    ``floor(src)`` and the next pixel, bicubic one before and two after, unless ``src`` is a whole number
    (then the kernel weights only that pixel). An unknown mode counts as bicubic, the widest.

    ``antialias`` when shrinking (``ratio > 1``) stretches the kernel by ``ratio``: output ``o`` reads the
    pixels ``i`` with ``|i + 1/2 - (o + 1/2)*ratio| < ratio * taps/2`` (PyTorch's ``support``).
    """
    taps = INTERPOLATION_TAPS.get(mode, 4)
    period, advance = ratio.denominator, ratio.numerator
    first, last = [], []
    for o in range(period):
        if antialias and ratio > 1 and taps > 1:
            centre, support = (o + Fraction(1, 2)) * ratio, ratio * taps / 2
            first.append(math.floor(centre - support - Fraction(1, 2)) + 1)
            last.append(math.ceil(centre + support - Fraction(1, 2)) - 1)
            continue
        if taps == 1:
            src = (o + Fraction(1, 2)) * ratio if mode == "nearest-exact" else o * ratio
        else:
            src = o * ratio if align_corners else (o + Fraction(1, 2)) * ratio - Fraction(1, 2)
        base = math.floor(src)
        between = taps > 1 and src != base
        first.append(base - (taps // 2 - 1 if between else 0))
        last.append(base + (taps // 2 if between else 0))
    return period, advance, first, last


def upsample(
    field: MaybeField,
    first_dim: int,
    ratio: Sequence[Fraction],
    mode: str,
    align_corners: bool = False,
    antialias: bool = False,
) -> MaybeField:
    """Field after resizing the dims ``first_dim, ...`` with source step ``ratio`` per output pixel
    (see :func:`resize_taps`): ``jump_out = jump_in*ratio``.

    Shape:
        - Input: ``(N, C, *spatial)`` with ``len(ratio)`` spatial dims from ``first_dim`` on.
    """
    if field is None or field.is_global:
        return field
    maps = []
    for c in ratio:
        period, advance, first, last = resize_taps(Fraction(c), mode, align_corners, antialias)
        maps.append(partial(read, period=period, advance=advance, first=first, last=last))
    return field.mapped(first_dim, maps)


def bins(field: MaybeField, first_dim: int, sizes: Sequence[tuple[int, int]]) -> MaybeField:
    """Field after an adaptive pool or a pixel (un)shuffle mapping ``L -> O`` per spatial dim: output ``o``
    reads ``[floor(o*L/O), ceil((o+1)*L/O))``, PyTorch's adaptive bin (for a shuffle, nearest upsampling or
    a ``k = s`` window); ``jump_out = jump_in*L/O``.

    Shape:
        - Input: ``(N, C, *spatial)`` with ``len(sizes)`` spatial dims from ``first_dim`` on.
    """
    if field is None or (field.is_global and not field.axes):
        return field
    if field.is_global:  # a gated map: only its jump still changes
        jump = [
            j * Fraction(*sizes[a - first_dim]) if 0 <= a - first_dim < len(sizes) else j
            for j, a in zip(field.jump, field.axes)
        ]
        return Field((), tuple(jump), field.axes, True)
    maps = []
    for length, out in sizes:
        g = math.gcd(length, out)
        period, advance = out // g, length // g
        first = [o * length // out for o in range(period)]
        last = [-(-(o + 1) * length // out) - 1 for o in range(period)]
        maps.append(partial(read, period=period, advance=advance, first=first, last=last))
    return field.mapped(first_dim, maps)


def shifted(field: MaybeField, dim: int, start: int, step: int = 1) -> MaybeField:
    """Field after taking units ``start, start + step, ...`` of tensor dim ``dim`` (slicing, ``narrow``;
    a negative ``start`` is padding)."""
    if field is None or field.is_global or dim not in field.axes or (start, step) == (0, 1):
        return field
    return field.mapped(dim, [partial(read, period=1, advance=step, first=[start], last=[start])])
