"""Convolution geometry as pure functions (no torch): the formulas of the CNN reference page.

Source for every formula: the "Convolutional Neural Networks" reference page, sections "Output Size
Formula", "Stride and Padding", "Parameter Count", "Depthwise Separable Convolutions", "Receptive Field"
and "EfficientNet", generalised where noted (dilation, groups, ``ceil_mode``) to the rules PyTorch uses.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal, NamedTuple

__all__ = [
    "CompoundScaling",
    "compound_scaling",
    "conv_output_size",
    "conv_params",
    "depthwise_separable_params",
    "depthwise_separable_reduction",
    "linear_params",
    "pool_output_size",
    "receptive_field",
    "same_padding",
]

Padding = int | Literal["valid", "same"]


def _check_at_least(minimum: int, **values: int) -> None:
    bad = {
        name: v
        for name, v in values.items()
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum
    }
    if bad:
        got = ", ".join(f"{name}={v!r}" for name, v in bad.items())
        raise ValueError(f"expected integers >= {minimum}, got {got}")


def _check_positive(**values: int) -> None:
    _check_at_least(1, **values)


def _check_non_negative(**values: int) -> None:
    _check_at_least(0, **values)


def _kernel_hw(kernel: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(kernel, numbers.Integral) and not isinstance(kernel, bool):
        kh = kw = kernel
    elif isinstance(kernel, Sequence) and len(kernel) == 2:
        kh, kw = kernel
    else:
        raise ValueError(f"kernel must be an int or a pair (kh, kw), got {kernel!r}")
    _check_positive(kernel_h=kh, kernel_w=kw)
    return kh, kw


def same_padding(kernel: int, dilation: int = 1) -> int:
    """Padding that keeps the size unchanged at stride 1: ``p = floor(d * (k - 1) / 2)``.

    The page gives ``p = floor(k/2)`` for odd ``k``; with dilation the effective kernel is
    ``d * (k - 1) + 1``, hence the formula above (equal to the page's for ``d = 1`` and odd ``k``).
    For an even effective kernel no symmetric padding keeps the size; this value then loses one pixel.

    Args:
        kernel: kernel size ``k``.
        dilation: dilation ``d``.

    Returns:
        The symmetric padding ``p`` per side.

    Example:
        >>> same_padding(3), same_padding(7), same_padding(3, dilation=2)
        (1, 3, 2)
    """
    if kernel < 1 or dilation < 1:
        raise ValueError(f"kernel and dilation must be >= 1, got kernel={kernel}, dilation={dilation}")
    return int(dilation * (kernel - 1) // 2)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: Padding = 0, dilation: int = 1) -> int:
    """Spatial output size of a convolution along one axis.

    Formula (page, "Output Size Formula", with dilation as in ``torch.nn.Conv2d``)::

        out = floor((size + 2*padding - d*(k - 1) - 1) / stride) + 1

    For ``d = 1`` this is the page's ``floor((H_in + 2*padding - kernel_size) / stride) + 1``.

    ``padding="valid"`` means ``padding=0``. ``padding="same"`` follows the TensorFlow convention
    ``out = ceil(size / stride)`` (the total padding ``max((out - 1)*stride + d*(k - 1) + 1 - size, 0)`` is
    split with the extra pixel on the right/bottom); at stride 1 this is ``size`` for every kernel, the
    page's "output size = input size (with stride 1)", and it equals PyTorch's ``padding="same"`` (which
    PyTorch accepts only at stride 1).

    Args:
        size: input size ``H_in`` (or ``W_in``).
        kernel: kernel size ``k``.
        stride: stride ``s``.
        padding: padding per side, ``"valid"`` or ``"same"``.
        dilation: dilation ``d``.

    Returns:
        The output size.

    Raises:
        ValueError: an argument is out of range, or the output would be smaller than 1.

    Example:
        >>> conv_output_size(224, kernel=7, stride=2, padding=3)
        112
    """
    _check_positive(size=size, kernel=kernel, stride=stride, dilation=dilation)
    if padding == "same":
        return int(-(-size // stride))
    if padding == "valid":
        padding = 0
    elif isinstance(padding, str):
        raise ValueError(f"padding must be an int, 'valid' or 'same', got {padding!r}")
    _check_non_negative(padding=padding)
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        raise ValueError(
            f"convolution output would be empty: size={size} + 2*padding={2 * padding} is smaller than the "
            f"effective kernel dilation*(kernel-1)+1={dilation * (kernel - 1) + 1} "
            f"(kernel={kernel}, dilation={dilation}, stride={stride})"
        )
    return int(span // stride + 1)


def pool_output_size(
    size: int,
    kernel: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Spatial output size of a max/average pooling window along one axis, by PyTorch's rule.

    Formula (page, "Output Size Formula", as ``torch.nn.MaxPool2d`` applies it)::

        out = floor_or_ceil((size + 2*padding - d*(k - 1) - 1) / stride) + 1
        if ceil_mode and (out - 1) * stride >= size + padding: out -= 1

    The correction keeps the last window starting inside the input or the left padding, never wholly in
    the right padding.

    Args:
        size: input size.
        kernel: window size ``k``.
        stride: stride ``s`` (``None`` means ``kernel``, as in PyTorch).
        padding: implicit padding per side; at most ``kernel // 2``, as PyTorch requires.
        dilation: dilation ``d`` (only max pooling uses it).
        ceil_mode: round up instead of down.

    Returns:
        The output size.

    Raises:
        ValueError: an argument is out of range, or the output would be smaller than 1.

    Example:
        >>> pool_output_size(28, 2), pool_output_size(5, 2, ceil_mode=True)
        (14, 3)
    """
    stride = kernel if stride is None else stride
    _check_positive(size=size, kernel=kernel, stride=stride, dilation=dilation)
    _check_non_negative(padding=padding)
    if padding > kernel // 2:
        raise ValueError(f"padding={padding} must be at most half the kernel (kernel={kernel})")
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        raise ValueError(
            f"pooling output would be empty: size={size} + 2*padding={2 * padding} is smaller than the "
            f"effective window dilation*(kernel-1)+1={dilation * (kernel - 1) + 1}"
        )
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return int(out)


def conv_params(
    c_in: int, c_out: int, kernel: int | Sequence[int], bias: bool = True, groups: int = 1
) -> int:
    """Number of parameters of a 2-D convolution.

    Formula (page, "Parameter Count", generalised to groups)::

        params = C_out * (C_in / groups * k_h * k_w) + (C_out if bias)

    For ``groups = 1`` this is the page's ``C_out * (C_in * k_h * k_w + 1)``.

    Args:
        c_in: input channels ``C_in``.
        c_out: output channels ``C_out``.
        kernel: ``k`` or ``(k_h, k_w)``.
        bias: whether the layer has a bias.
        groups: number of groups; must divide ``c_in`` and ``c_out``.

    Returns:
        The parameter count.

    Example:
        >>> conv_params(64, 128, 3)
        73856
    """
    _check_positive(c_in=c_in, c_out=c_out, groups=groups)
    kh, kw = _kernel_hw(kernel)
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both c_in={c_in} and c_out={c_out}")
    return int(c_out * (c_in // groups) * kh * kw + (c_out if bias else 0))


def linear_params(n_in: int, n_out: int, bias: bool = True) -> int:
    """Number of parameters of a fully connected layer: ``n_out * n_in + (n_out if bias)``.

    Source: page, "Parameter Count" (a fully connected layer is the ``1x1`` case over a flat input).

    Args:
        n_in: input features.
        n_out: output features.
        bias: whether the layer has a bias.

    Returns:
        The parameter count.

    Example:
        >>> linear_params(120, 84)
        10164
    """
    _check_positive(n_in=n_in, n_out=n_out)
    return int(n_out * n_in + (n_out if bias else 0))


def depthwise_separable_params(c_in: int, c_out: int, kernel: int | Sequence[int], bias: bool = False) -> int:
    """Parameters of a depthwise ``k x k`` conv followed by a pointwise ``1 x 1`` conv.

    Formula (page, "Depthwise Separable Convolutions")::

        params = C_in * k_h * k_w  +  C_in * C_out  (+ C_in + C_out if bias)

    Args:
        c_in: input channels (also the depthwise output channels).
        c_out: output channels of the pointwise conv.
        kernel: ``k`` or ``(k_h, k_w)`` of the depthwise conv.
        bias: whether both convolutions have a bias.

    Returns:
        The parameter count.

    Example:
        >>> depthwise_separable_params(32, 64, 3)
        2336
    """
    return conv_params(c_in, c_in, kernel, bias=bias, groups=c_in) + conv_params(c_in, c_out, 1, bias=bias)


def depthwise_separable_reduction(kernel: int, c_out: int) -> float:
    """Ratio of depthwise-separable to standard convolution parameters (no bias).

    Formula (page, "Depthwise Separable Convolutions")::

        reduction = (k^2 + C_out) / (k^2 * C_out)

    It is ``(C_in k^2 + C_in C_out) / (C_out C_in k^2)``; ``C_in`` cancels. Roughly ``1 / k^2`` for
    large ``C_out``.

    Args:
        kernel: square kernel size ``k``.
        c_out: output channels ``C_out``.

    Returns:
        The ratio (smaller is a bigger saving).

    Example:
        >>> round(depthwise_separable_reduction(3, 64), 6)
        0.126736
    """
    _check_positive(kernel=kernel, c_out=c_out)
    return float((kernel**2 + c_out) / (kernel**2 * c_out))


def receptive_field(layers: Sequence[Sequence[int]]) -> tuple[int, int]:
    """Receptive field and jump (stride product) after a chain of conv/pool layers.

    Formula (page, "Receptive Field", with the effective kernel ``d*(k-1)+1`` of a dilated layer)::

        RF = 1 + sum_l d_l * (k_l - 1) * prod_{j<l} s_j

    computed as ``rf = 1; jump = 1``, then for each layer ``rf += d*(k-1) * jump; jump *= s``.
    For ``L`` stride-1 layers of kernel ``k`` it is the page's ``1 + L*(k-1)``.

    Args:
        layers: one tuple per layer: ``(kernel,)``, ``(kernel, stride)`` or ``(kernel, stride, dilation)``.

    Returns:
        ``(rf, jump)``: the receptive field of one output unit, in input pixels, and the distance in input
        pixels between neighbouring output units.

    Example:
        >>> receptive_field([(3, 1, 1), (3, 2, 1)])
        (5, 2)
    """
    rf, jump = 1, 1
    for index, layer in enumerate(layers):
        if not isinstance(layer, Sequence) or not 1 <= len(layer) <= 3:
            raise ValueError(
                f"layer {index} must be (kernel,), (kernel, stride) or (kernel, stride, dilation), got {layer!r}"
            )
        kernel, stride, dilation = (*layer, 1, 1)[:3]
        _check_positive(kernel=kernel, stride=stride, dilation=dilation)
        rf += dilation * (kernel - 1) * jump
        jump *= stride
    return int(rf), int(jump)


class CompoundScaling(NamedTuple):
    """EfficientNet multipliers for one compound coefficient ``phi``.

    Attributes:
        depth: layer-count multiplier ``alpha^phi``.
        width: channel multiplier ``beta^phi``.
        resolution: input-size multiplier ``gamma^phi``.
        flops: FLOPs multiplier ``(alpha * beta^2 * gamma^2)^phi``.
    """

    depth: float
    width: float
    resolution: float
    flops: float


def compound_scaling(
    phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15
) -> CompoundScaling:
    """EfficientNet compound scaling of depth, width and resolution.

    Formula (page, "EfficientNet"; Tan & Le 2019, eq. 3)::

        depth = alpha^phi,  width = beta^phi,  resolution = gamma^phi,
        flops = (alpha * beta^2 * gamma^2)^phi      (about 2^phi for the defaults)

    FLOPs grow with depth, with the square of width and with the square of resolution.

    Args:
        phi: compound coefficient (0 is the baseline, negative scales down).
        alpha: depth base; the paper's grid search gives 1.2.
        beta: width base; 1.1.
        gamma: resolution base; 1.15.

    Returns:
        A :class:`CompoundScaling` named tuple.

    Example:
        >>> compound_scaling(1).depth
        1.2
    """
    if not all(math.isfinite(v) for v in (phi, alpha, beta, gamma)):
        raise ValueError(f"phi, alpha, beta, gamma must be finite, got {phi}, {alpha}, {beta}, {gamma}")
    if min(alpha, beta, gamma) <= 0:
        raise ValueError(
            f"alpha, beta, gamma must be positive, got alpha={alpha}, beta={beta}, gamma={gamma}"
        )
    return CompoundScaling(
        depth=alpha**phi,
        width=beta**phi,
        resolution=gamma**phi,
        flops=(alpha * beta**2 * gamma**2) ** phi,
    )
