"""NumPy reference convolutions: the page's loop, a vectorized im2col + GEMM version, and its variants.

Every function computes the page's formula (section "Convolution Operation")::

    Output[n, c_out, i, j] = sum_{c_in} sum_{m, n'} Input[n, c_in, i*s + m*d, j*s + n'*d]
                             * Filter[c_out, c_in, m, n'] + bias[c_out]

over the zero-padded input, with stride ``s`` and dilation ``d`` (the page's form has ``s = d = 1``), and
with ``c_in`` running over the input channels of ``c_out``'s group when ``groups > 1``. The results equal
``torch.nn.functional.conv2d``; these functions are oracles for tests and teaching and never import torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnkit.geometry import conv_output_size

__all__ = [
    "conv1x1",
    "conv2d_forward",
    "conv2d_forward_loop",
    "depthwise_conv2d",
    "depthwise_separable_conv2d",
]

IntPair = int | Sequence[int]


def pair(value: IntPair, name: str) -> tuple[int, int]:
    """Return ``(value, value)`` for an int, or the two ints of a pair; raise ``ValueError`` otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def as_nchw(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as a floating NumPy array, checking it is 4-D ``(N, C, H, W)``."""
    array = np.asarray(array)
    if array.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    return array


def _check_weight(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, groups: int) -> None:
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in / groups, kH, kW), got shape {weight.shape}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    c_out, c_in_per_group = weight.shape[:2]
    if c_out % groups:
        raise ValueError(
            f"groups={groups} must divide the {c_out} output channels (weight shape {weight.shape})"
        )
    if x.shape[1] != c_in_per_group * groups:
        raise ValueError(
            f"input has {x.shape[1]} channels but weight expects {c_in_per_group * groups} "
            f"({c_in_per_group} per group x groups={groups}; weight shape {weight.shape}, input shape {x.shape})"
        )
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(
            f"bias must have shape ({c_out},) to match weight shape {weight.shape}, got {bias.shape}"
        )


def conv2d_forward_loop(
    input: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int = 1, padding: int = 0
) -> np.ndarray:
    """The page's loop: one ``tensordot`` per output position (the teaching baseline).

    Same behaviour as the page's ``conv2d_forward``: square stride and padding, no dilation or groups, and a
    ``float64`` output. ``bias=None`` means no bias.

    Formula (page, "Convolution Operation")::

        Output[c_out, i, j] = sum_{c_in} sum_{m,n} Input[c_in, i*s+m, j*s+n] * Filter[c_out, c_in, m, n] + bias[c_out]

    Args:
        input: input batch.
        weight: filters.
        bias: one value per output channel, or ``None``.
        stride: stride ``s`` (both axes).
        padding: zero padding ``p`` per side (both axes).

    Returns:
        The output, ``float64``.

    Shape:
        - input: ``(N, C_in, H, W)``
        - weight: ``(C_out, C_in, kH, kW)``; bias: ``(C_out,)``
        - output: ``(N, C_out, H_out, W_out)`` with ``H_out = floor((H + 2p - kH) / s) + 1``.
    """
    input = as_nchw(input, "input")
    weight = np.asarray(weight)
    bias = None if bias is None else np.asarray(bias)
    _check_weight(input, weight, bias, groups=1)
    batch, _, height, width = input.shape
    c_out, _, k_h, k_w = weight.shape
    h_out = conv_output_size(height, k_h, stride, padding)
    w_out = conv_output_size(width, k_w, stride, padding)
    input_padded = np.pad(input, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    bias_term = 0.0 if bias is None else bias
    output = np.zeros((batch, c_out, h_out, w_out))
    for i in range(h_out):
        for j in range(w_out):
            patch = input_padded[:, :, i * stride : i * stride + k_h, j * stride : j * stride + k_w]
            output[:, :, i, j] = np.tensordot(patch, weight, axes=([1, 2, 3], [1, 2, 3])) + bias_term
    return output


def conv2d_forward(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> np.ndarray:
    """Vectorized 2-D convolution: a strided window view, one copy into columns (im2col), one GEMM.

    Formula (page, "Convolution Operation", with stride, dilation and groups as in ``torch.nn.Conv2d``)::

        Output[b, c_out, i, j] = sum_{c in group(c_out)} sum_{m,n} Input_pad[b, c, i*s_h + m*d_h, j*s_w + n*d_w]
                                 * Filter[c_out, c, m, n] + bias[c_out]

    The padded input is viewed (no copy) as windows ``(N, C, H_out, W_out, kH, kW)`` with
    ``sliding_window_view``, sliced by stride and dilation, and copied once into the column matrix
    ``cols[g, (c, m, n), (b, i, j)]``. One batched ``matmul`` over the groups,
    ``(groups, C_out/groups, C_in/groups*kH*kW) @ (groups, C_in/groups*kH*kW, N*H_out*W_out)``, computes
    every output: the sum over ``(c, m, n)`` above is that product's inner dimension.

    Args:
        input: input batch.
        weight: filters, ``C_in / groups`` input channels each.
        bias: one value per output channel, or ``None``.
        stride: ``s`` or ``(s_h, s_w)``.
        padding: zero padding per side, ``p`` or ``(p_h, p_w)``.
        dilation: ``d`` or ``(d_h, d_w)``.
        groups: channel groups; must divide ``C_in`` and ``C_out``.

    Returns:
        The output, in the floating dtype common to input, weight and bias (``float64`` for integers).

    Shape:
        - input: ``(N, C_in, H, W)``
        - weight: ``(C_out, C_in / groups, kH, kW)``; bias: ``(C_out,)``
        - output: ``(N, C_out, H_out, W_out)``, ``H_out = floor((H + 2 p_h - d_h (kH - 1) - 1) / s_h) + 1``.

    Raises:
        ValueError: shapes disagree (the message names the dimensions), or an argument is out of range.
    """
    x = as_nchw(input, "input")
    w = np.asarray(weight)
    b = None if bias is None else np.asarray(bias)
    _check_weight(x, w, b, groups)
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = (
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
    )
    batch, c_in, height, width = x.shape
    c_out, c_group, k_h, k_w = w.shape
    h_out = conv_output_size(height, k_h, s_h, p_h, d_h)
    w_out = conv_output_size(width, k_w, s_w, p_w, d_w)
    dtype = np.result_type(x, w, *([] if b is None else [b]))

    padded = np.pad(x, ((0, 0), (0, 0), (p_h, p_h), (p_w, p_w))) if p_h or p_w else x
    windows = sliding_window_view(padded, (d_h * (k_h - 1) + 1, d_w * (k_w - 1) + 1), axis=(2, 3))
    windows = windows[:, :, : (h_out - 1) * s_h + 1 : s_h, : (w_out - 1) * s_w + 1 : s_w, ::d_h, ::d_w]
    # (N, C, H_out, W_out, kH, kW) -> (C, kH, kW, N, H_out, W_out): the copy makes the GEMM's right operand.
    cols = windows.transpose(1, 4, 5, 0, 2, 3).reshape(groups, c_group * k_h * k_w, batch * h_out * w_out)
    out = np.matmul(w.reshape(groups, c_out // groups, c_group * k_h * k_w).astype(dtype, copy=False), cols)
    out = out.reshape(c_out, batch, h_out, w_out).transpose(1, 0, 2, 3)
    out = np.ascontiguousarray(out, dtype=dtype)
    if b is not None:
        out += b.reshape(1, c_out, 1, 1)
    return out


def depthwise_conv2d(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> np.ndarray:
    """Depthwise convolution: each input channel convolved with its own ``multiplier`` filters.

    It is :func:`conv2d_forward` with ``groups = C_in``; parameters ``C_in * multiplier * kH * kW`` (page,
    "Depthwise Separable Convolutions", step 1, with ``multiplier = 1``).

    Args:
        input: input batch.
        weight: one or more filters per input channel.
        bias: one value per output channel, or ``None``.
        stride: ``s`` or ``(s_h, s_w)``.
        padding: ``p`` or ``(p_h, p_w)``.
        dilation: ``d`` or ``(d_h, d_w)``.

    Returns:
        The output.

    Shape:
        - input: ``(N, C_in, H, W)``
        - weight: ``(C_in * multiplier, 1, kH, kW)``; bias: ``(C_in * multiplier,)``
        - output: ``(N, C_in * multiplier, H_out, W_out)``.
    """
    x = as_nchw(input, "input")
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[1] != 1 or w.shape[0] % x.shape[1]:
        raise ValueError(
            f"depthwise weight must have shape (C_in * multiplier, 1, kH, kW) with C_in={x.shape[1]} "
            f"(input shape {x.shape}), got {w.shape}"
        )
    return conv2d_forward(x, w, bias, stride, padding, dilation, groups=x.shape[1])


def conv1x1(input: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Pointwise (``1 x 1``) convolution: a channel-mixing matrix product at every pixel.

    Formula (page, "1x1 Convolutions")::

        Output[n, c_out, i, j] = sum_{c_in} Input[n, c_in, i, j] * Filter[c_out, c_in, 0, 0] + bias[c_out]

    Args:
        input: input batch.
        weight: ``1 x 1`` filters.
        bias: one value per output channel, or ``None``.

    Returns:
        The output.

    Shape:
        - input: ``(N, C_in, H, W)``
        - weight: ``(C_out, C_in, 1, 1)``; bias: ``(C_out,)``
        - output: ``(N, C_out, H, W)``.
    """
    x = as_nchw(input, "input")
    w = np.asarray(weight)
    b = None if bias is None else np.asarray(bias)
    _check_weight(x, w, b, groups=1)
    if w.shape[2:] != (1, 1):
        raise ValueError(f"conv1x1 needs a (C_out, C_in, 1, 1) weight, got {w.shape}")
    batch, c_in, height, width = x.shape
    out = np.matmul(w.reshape(w.shape[0], c_in), x.reshape(batch, c_in, height * width))
    out = out.reshape(batch, w.shape[0], height, width)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def depthwise_separable_conv2d(
    input: np.ndarray,
    depthwise_weight: np.ndarray,
    pointwise_weight: np.ndarray,
    depthwise_bias: np.ndarray | None = None,
    pointwise_bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> np.ndarray:
    """Depthwise convolution followed by a pointwise ``1 x 1`` convolution (MobileNet's factorisation).

    Page, "Depthwise Separable Convolutions": depthwise (``C_in * k^2`` parameters) then pointwise
    (``C_in * C_out``), a parameter ratio of ``(k^2 + C_out) / (k^2 * C_out)`` to a standard convolution.
    Stride, padding and dilation apply to the depthwise step.

    Args:
        input: input batch.
        depthwise_weight: depthwise filters.
        pointwise_weight: ``1 x 1`` filters.
        depthwise_bias: bias of the depthwise step, or ``None``.
        pointwise_bias: bias of the pointwise step, or ``None``.
        stride: depthwise ``s`` or ``(s_h, s_w)``.
        padding: depthwise ``p`` or ``(p_h, p_w)``.
        dilation: depthwise ``d`` or ``(d_h, d_w)``.

    Returns:
        The output.

    Shape:
        - input: ``(N, C_in, H, W)``
        - depthwise_weight: ``(C_mid, 1, kH, kW)`` with ``C_mid = C_in * multiplier``
        - pointwise_weight: ``(C_out, C_mid, 1, 1)``
        - output: ``(N, C_out, H_out, W_out)``.
    """
    hidden = depthwise_conv2d(input, depthwise_weight, depthwise_bias, stride, padding, dilation)
    return conv1x1(hidden, pointwise_weight, pointwise_bias)
