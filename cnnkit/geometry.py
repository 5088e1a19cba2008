"""Convolution geometry as pure functions (no torch): the formulas of the CNN reference page.

Source for every formula: the cnnkit reference page (``seed/cnn-reference.txt``), sections "Output Size
Formula", "Stride and Padding", "Parameter Count", "Depthwise Separable Convolutions", "Receptive Field"
and "EfficientNet", generalised where noted.
"""

from __future__ import annotations


def same_padding(kernel: int, dilation: int = 1) -> int:
    """Padding that keeps the size unchanged at stride 1: ``p = floor(d * (k - 1) / 2)``.

    The page gives ``p = floor(k/2)`` for odd ``k``; with dilation the effective kernel is
    ``d * (k - 1) + 1``, hence the formula above (equal to the page's for ``d = 1`` and odd ``k``).

    Example:
        >>> same_padding(3), same_padding(7), same_padding(3, dilation=2)
        (1, 3, 2)
    """
    if kernel < 1 or dilation < 1:
        raise ValueError(f"kernel and dilation must be >= 1, got kernel={kernel}, dilation={dilation}")
    return dilation * (kernel - 1) // 2
