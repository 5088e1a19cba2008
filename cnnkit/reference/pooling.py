"""NumPy reference pooling with PyTorch's semantics: max, average, global and adaptive pooling.

Page, section "Pooling": max pooling takes the maximum over each window, average pooling the mean,
global average pooling the mean over the whole map, adaptive pooling picks its windows from a target
output size. Window placement, padding, ``ceil_mode`` and divisors follow ``torch.nn.functional`` so that
these functions are exact oracles for it; they never import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnkit.geometry import pool_output_size
from cnnkit.reference.conv import IntPair, as_nchw, pair

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "max_pool2d",
]


def _windows(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
    fill: float,
) -> np.ndarray:
    """View ``x`` padded with ``fill`` as windows ``(N, C, H_out, W_out, kH, kW)``.

    With ``ceil_mode`` the last window may reach past the right padding; the padding on the right/bottom
    is extended with ``fill`` just enough for every window to fit.
    """
    pads = []
    for size, k, s, p, d, out in zip(x.shape[2:], kernel, stride, padding, dilation, out_size):
        needed = (out - 1) * s + d * (k - 1) + 1
        pads.append((p, max(needed - size - p, p)))
    padded = np.pad(x, ((0, 0), (0, 0), *pads), constant_values=fill)
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    windows = sliding_window_view(padded, span, axis=(2, 3))
    (h_out, w_out), (s_h, s_w), (d_h, d_w) = out_size, stride, dilation
    return windows[:, :, : (h_out - 1) * s_h + 1 : s_h, : (w_out - 1) * s_w + 1 : s_w, ::d_h, ::d_w]


def _pool_geometry(
    x: np.ndarray,
    kernel: IntPair,
    stride: IntPair | None,
    padding: IntPair,
    dilation: IntPair,
    ceil_mode: bool,
) -> tuple[tuple[int, int], ...]:
    k = pair(kernel, "kernel")
    s = k if stride is None else pair(stride, "stride")
    p, d = pair(padding, "padding"), pair(dilation, "dilation")
    out = tuple(pool_output_size(n, *args, ceil_mode) for n, *args in zip(x.shape[2:], k, s, p, d))
    return k, s, p, d, out


def max_pool2d(
    x: np.ndarray,
    kernel: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
) -> np.ndarray:
    """Max pooling: ``out[n, c, i, j] = max_{m, n'} x_pad[n, c, i*s + m*d, j*s + n'*d]``.

    Padding is ``-inf`` (never selected), as in ``torch.nn.functional.max_pool2d``; NaN propagates.
    Output size: :func:`cnnkit.geometry.pool_output_size` on each axis.

    Args:
        x: input batch.
        kernel: window ``k`` or ``(kH, kW)``.
        stride: ``s`` or ``(s_h, s_w)``; ``None`` means the kernel.
        padding: ``p`` or ``(p_h, p_w)``, at most half the kernel.
        dilation: ``d`` or ``(d_h, d_w)``.
        ceil_mode: round the output size up (the last window must still start inside the input or left
            padding).

    Returns:
        The pooled batch.

    Shape:
        - x: ``(N, C, H, W)``
        - output: ``(N, C, H_out, W_out)``.
    """
    x = as_nchw(x, "x")
    k, s, p, d, out = _pool_geometry(x, kernel, stride, padding, dilation, ceil_mode)
    return _windows(x, k, s, p, d, out, fill=-np.inf).max(axis=(-2, -1))


def avg_pool2d(
    x: np.ndarray,
    kernel: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Average pooling with PyTorch's divisor rule.

    ``out[n, c, i, j] = sum over the window of x_pad / divisor(i, j)``, where, along each axis with window
    start ``a = i*s - p`` and end ``b = min(a + k, size + p)``, the divisor factor is ``b - a`` when
    ``count_include_pad`` (padding counts, the part of a ``ceil_mode`` window past the padding does not)
    and ``min(b, size) - max(a, 0)`` otherwise (input pixels only). The divisor is the product of the two
    axes' factors, as in ``torch.nn.functional.avg_pool2d``.

    Args:
        x: input batch.
        kernel: window ``k`` or ``(kH, kW)``.
        stride: ``s`` or ``(s_h, s_w)``; ``None`` means the kernel.
        padding: zero padding ``p`` or ``(p_h, p_w)``, at most half the kernel.
        ceil_mode: round the output size up.
        count_include_pad: count padded zeros in the divisor.

    Returns:
        The pooled batch.

    Shape:
        - x: ``(N, C, H, W)``
        - output: ``(N, C, H_out, W_out)``.
    """
    x = as_nchw(x, "x")
    k, s, p, d, out = _pool_geometry(x, kernel, stride, padding, 1, ceil_mode)
    sums = _windows(x, k, s, p, d, out, fill=0.0).sum(axis=(-2, -1))
    divisors = []
    for size, k_a, s_a, p_a, n_out in zip(x.shape[2:], k, s, p, out):
        start = np.arange(n_out) * s_a - p_a
        end = np.minimum(start + k_a, size + p_a)
        if count_include_pad:
            divisors.append(end - start)
        else:
            divisors.append(np.minimum(end, size) - np.maximum(start, 0))
    return sums / (divisors[0][:, None] * divisors[1][None, :])


def global_avg_pool2d(x: np.ndarray) -> np.ndarray:
    """Global average pooling: the mean of each channel over the whole map, kept as a ``1 x 1`` map.

    ``out[n, c, 0, 0] = (1 / (H W)) sum_{i, j} x[n, c, i, j]`` (page, "Pooling": "Global avg: mean over entire
    map"), equal to ``adaptive_avg_pool2d(x, 1)``.

    Args:
        x: input batch.

    Returns:
        The pooled batch.

    Shape:
        - x: ``(N, C, H, W)``
        - output: ``(N, C, 1, 1)``.
    """
    return as_nchw(x, "x").mean(axis=(2, 3), keepdims=True)


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    # torch's rule: bin i covers [floor(i * size / out), ceil((i + 1) * size / out)).
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _adaptive(
    x: np.ndarray, output_size: int | None | Sequence[int | None], reduce: Callable[..., np.ndarray]
) -> np.ndarray:
    x = as_nchw(x, "x")
    single = output_size is None or isinstance(output_size, (int, np.integer))
    sizes = (output_size, output_size) if single else output_size
    if len(sizes) != 2:
        raise ValueError(f"output_size must be an int, None or a pair, got {output_size!r}")
    sizes = tuple(n if o is None else o for n, o in zip(x.shape[2:], sizes))
    if any(isinstance(o, bool) or not isinstance(o, (int, np.integer)) or o < 1 for o in sizes):
        raise ValueError(f"output_size must hold positive ints (or None), got {output_size!r}")
    # Max and mean over a rectangle are separable: reduce the width bins, then the height bins.
    rows = np.stack([reduce(x[..., a:b], axis=-1) for a, b in _adaptive_bins(x.shape[3], sizes[1])], axis=-1)
    return np.stack(
        [reduce(rows[..., a:b, :], axis=-2) for a, b in _adaptive_bins(x.shape[2], sizes[0])], axis=-2
    )


def adaptive_avg_pool2d(x: np.ndarray, output_size: int | None | Sequence[int | None]) -> np.ndarray:
    """Adaptive average pooling to a fixed output size, with PyTorch's bins.

    Output cell ``(i, j)`` is the mean over rows ``floor(i H / H_out) <= h < ceil((i + 1) H / H_out)`` and
    the columns given by the same rule on ``W`` (bins may overlap when the size does not divide).

    Args:
        x: input batch.
        output_size: ``S``, ``(H_out, W_out)``; ``None`` (alone or in the pair) keeps that input size.

    Returns:
        The pooled batch.

    Shape:
        - x: ``(N, C, H, W)``
        - output: ``(N, C, H_out, W_out)``.
    """
    return _adaptive(x, output_size, np.mean)


def adaptive_max_pool2d(x: np.ndarray, output_size: int | None | Sequence[int | None]) -> np.ndarray:
    """Adaptive max pooling to a fixed output size, with PyTorch's bins (see :func:`adaptive_avg_pool2d`).

    Args:
        x: input batch.
        output_size: ``S``, ``(H_out, W_out)``; ``None`` (alone or in the pair) keeps that input size.

    Returns:
        The pooled batch.

    Shape:
        - x: ``(N, C, H, W)``
        - output: ``(N, C, H_out, W_out)``.
    """
    return _adaptive(x, output_size, np.max)
