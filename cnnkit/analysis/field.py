"""Receptive field and jump of a tensor, and how graph operations change them.

A :class:`Field` describes every unit of a tensor with respect to the network input: for each spatial axis
of the input (height, width, ...) it holds the receptive field ``rf`` (side length, in input pixels, of
the input region that can change the unit) and the jump (input pixels between neighbouring units, the
stride product), plus the tensor dimension where that input axis now lives (permutes and reshapes move
it). A global field marks a tensor whose units each depend on the whole input.

Rules (per spatial axis; source: the reference page, "Receptive Field", with the effective kernel
``d*(k-1)+1`` of a dilated layer):

- window op (conv, pool) with kernel ``k``, stride ``s``, dilation ``d``:
  ``rf_out = rf_in + d*(k-1)*jump_in``, ``jump_out = jump_in*s``;
- transposed conv: output unit ``o`` reads input ``i`` when ``o = i*s + j*d - p`` for a tap ``j``; taps
  with the same ``j*d mod s`` reach the same outputs, so ``rf_out = rf_in + span*jump_in`` with ``span``
  the largest ``(j_max - j_min)*d/s`` over those residue classes, and ``jump_out = jump_in/s``;
- upsampling by ``s``: ``jump_out = jump_in/s``; nearest keeps ``rf``, (bi/tri)linear reads 2 input
  pixels per side (``rf + jump_in``), bicubic 4 (``rf + 3*jump_in``);
- several inputs (add, mul, cat, ...): the largest ``rf`` and the largest jump over the inputs; a global
  input makes the output global (a map gated by a global value, as in squeeze-and-excitation, keeps its
  spatial axes so that later strides still multiply its jump);
- a window that mixes a spatial axis wholesale (it sits in the channel dim of a conv, a linear layer
  reads it, a reduction runs over it) makes the output global, and everything after it stays global.

Jumps are exact fractions, so upsampling after downsampling returns to whole numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Field:
    """Receptive field, jump and location of each input spatial axis in one tensor.

    Args:
        rf: receptive field per input spatial axis, in input pixels (empty when global).
        jump: distance in input pixels between neighbouring units, per input spatial axis. A global
            field keeps one number, the largest jump on the way to it, for reporting.
        axes: the tensor dimension holding each input spatial axis (empty when global).
        is_global: every unit depends on the whole input.
    """

    rf: tuple[Fraction, ...]
    jump: tuple[Fraction, ...]
    axes: tuple[int, ...]
    is_global: bool = False

    def moved(self, axes: Sequence[int]) -> Field:
        """The same field with the spatial axes at new tensor dimensions."""
        return Field(self.rf, self.jump, tuple(axes), self.is_global)

    def made_global(self, jump_factor: Fraction | int = 1) -> Field:
        """The global field reached from this one; its jump is this one's largest times ``jump_factor``."""
        return Field((), (max(self.jump, default=Fraction(1)) * jump_factor,), (), True)


MaybeField = Field | None
"""A field, or ``None`` for a tensor that does not depend on the network input at all (a constant)."""


def input_field(ndim: int) -> Field:
    """Field of the network input ``(N, C, *spatial)``: ``rf = 1``, ``jump = 1`` on every spatial axis.

    An input without spatial axes (``ndim < 3``, e.g. ``(N, features)``) is global from the start.
    """
    if ndim < 3:
        return Field((), (Fraction(1),), (), True)
    n = ndim - 2
    return Field((Fraction(1),) * n, (Fraction(1),) * n, tuple(range(2, ndim)))


def reported_rf(field: MaybeField) -> int | str:
    """Receptive field as reported: the largest side in whole pixels, ``"global"``, or 0 for a constant."""
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

    The largest ``rf`` and the largest jump per axis over the inputs; global if any input is global or
    the inputs disagree on where the spatial axes are; ``None`` if no input depends on the network input.
    The caller expresses each input's axes in the output's dimensions first (see :func:`broadcast`).
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
    first = live[0]
    rf = tuple(max(f.rf[i] for f in live) for i in range(len(first.rf)))
    jump = tuple(max(f.jump[i] for f in live) for i in range(len(first.rf)))
    return Field(rf, jump, first.axes)


def broadcast(field: MaybeField, in_ndim: int, out_ndim: int) -> MaybeField:
    """Express ``field`` of an ``in_ndim`` tensor in the dims of a broadcast ``out_ndim`` result (right-aligned)."""
    if field is None or field.is_global or in_ndim == out_ndim:
        return field
    return field.moved(a + out_ndim - in_ndim for a in field.axes)


def window(
    field: MaybeField,
    first_dim: int,
    kernel: Sequence[int],
    stride: Sequence[int | Fraction],
    dilation: Sequence[int],
) -> MaybeField:
    """Field after a sliding-window op (conv, pool) over the dims ``first_dim, first_dim + 1, ...``.

    ``rf_out = rf_in + d*(k-1)*jump_in`` and ``jump_out = jump_in*s`` on each axis the window slides
    over. The window mixes everything along the dims before ``first_dim`` other than the batch dim
    (channels), so a spatial axis living there makes the output global.
    """
    if field is None or (field.is_global and not field.axes):
        return field
    if field.is_global:  # a gated map: only its jump still changes
        jump = list(field.jump)
        for i, axis in enumerate(field.axes):
            offset = axis - first_dim
            if 0 <= offset < len(kernel):
                jump[i] = jump[i] * Fraction(stride[offset])
        return Field((), tuple(jump), field.axes, True)
    rf, jump = list(field.rf), list(field.jump)
    for i, axis in enumerate(field.axes):
        offset = axis - first_dim
        if 0 <= offset < len(kernel):
            rf[i] = rf[i] + dilation[offset] * (kernel[offset] - 1) * jump[i]
            jump[i] = jump[i] * Fraction(stride[offset])
        elif 0 < axis < first_dim:
            return field.made_global()
    return Field(tuple(rf), tuple(jump), field.axes)


def transposed_span(kernel: int, stride: int, dilation: int) -> Fraction:
    """Largest distance, in units of the transposed conv's input, between two inputs feeding one output.

    Output ``o`` reads input ``i = (o + p - j*d)/s`` for the taps ``j`` where that is a whole number, i.e.
    the taps of one residue class of ``j*d mod s``. The span is ``(j_max - j_min)*d/s`` within a class,
    maximised over classes. Stride 1 gives ``d*(k-1)``, the ordinary conv; ``k = s`` gives 0.
    """
    by_residue: dict[int, list[int]] = {}
    for j in range(kernel):
        by_residue.setdefault((j * dilation) % stride, []).append(j)
    return max(Fraction((max(js) - min(js)) * dilation, stride) for js in by_residue.values())


def transposed_window(
    field: MaybeField, first_dim: int, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> MaybeField:
    """Field after a transposed convolution: ``rf += span*jump_in``, ``jump /= s`` (see :func:`transposed_span`)."""
    if field is None or field.is_global:
        return field
    rf, jump = list(field.rf), list(field.jump)
    for i, axis in enumerate(field.axes):
        offset = axis - first_dim
        if 0 <= offset < len(kernel):
            rf[i] = rf[i] + transposed_span(kernel[offset], stride[offset], dilation[offset]) * jump[i]
            jump[i] = jump[i] / stride[offset]
        elif 0 < axis < first_dim:
            return field.made_global()
    return Field(tuple(rf), tuple(jump), field.axes)


INTERPOLATION_TAPS = {
    "nearest": 1,
    "nearest-exact": 1,
    "linear": 2,
    "bilinear": 2,
    "trilinear": 2,
    "bicubic": 4,
}
"""Input pixels per side that one output pixel of each interpolation mode reads."""


def upsample(field: MaybeField, first_dim: int, scale: Sequence[Fraction], mode: str) -> MaybeField:
    """Field after resizing by ``scale`` per spatial dim: ``jump /= scale``, ``rf += (taps - 1)*jump_in``.

    ``taps`` is :data:`INTERPOLATION_TAPS` of ``mode`` (an unknown mode counts as bicubic, the widest).
    """
    if field is None or field.is_global:
        return field
    taps = INTERPOLATION_TAPS.get(mode, 4)
    rf, jump = list(field.rf), list(field.jump)
    for i, axis in enumerate(field.axes):
        offset = axis - first_dim
        if 0 <= offset < len(scale):
            rf[i] = rf[i] + (taps - 1) * jump[i]
            jump[i] = jump[i] / scale[offset]
    return Field(tuple(rf), tuple(jump), field.axes)
