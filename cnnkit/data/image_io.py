"""Reading and writing image files safely: size checked from the header before decoding, never overwriting.

Every reader in :mod:`cnnkit.data` goes through :func:`read_image`, so the rules are the same everywhere:

- a missing file raises :class:`~cnnkit.errors.DataError` naming the path;
- the image size is read from the file header (Pillow opens lazily) and an image over ``max_pixels`` is
  refused before a single pixel is decoded;
- a file that is not an image, or whose data is truncated or corrupt, raises :class:`CorruptImageError`
  (a ``DataError``), which datasets built with ``skip_corrupt=True`` catch, skip and count.

Writers go through :func:`write_png` and :func:`refuse_existing`: a user's file is never replaced unless
``overwrite=True`` is passed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, encode_png, read_file

from cnnkit.errors import DataError, did_you_mean

ImageMode = Literal["RGB", "GRAY", "UNCHANGED"]

DEFAULT_MAX_PIXELS: int | None = Image.MAX_IMAGE_PIXELS
"""Pillow's decompression-bomb limit (about 89.5 million pixels), the default ``max_pixels``."""

_READ_MODES = {"RGB": ImageReadMode.RGB, "GRAY": ImageReadMode.GRAY, "UNCHANGED": ImageReadMode.UNCHANGED}


class CorruptImageError(DataError):
    """An image file cannot be identified or decoded (not an image, truncated, corrupt)."""


def check_mode(mode: str) -> ImageMode:
    """Return ``mode`` if it is one of ``"RGB"``, ``"GRAY"``, ``"UNCHANGED"``, else raise ``DataError``."""
    if mode not in _READ_MODES:
        raise DataError(
            f"unknown image mode {mode!r}; expected one of {sorted(_READ_MODES)}{did_you_mean(mode, _READ_MODES)}"
        )
    return mode  # type: ignore[return-value]


def image_size(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Read an image's ``(width, height)`` from its header, without decoding the pixels.

    Args:
        path: image file.
        max_pixels: refuse images with more than this many pixels (``None``: no limit of ours). Pillow
            itself refuses headers over twice ``PIL.Image.MAX_IMAGE_PIXELS``; raise that global to go further.

    Returns:
        ``(width, height)`` in pixels.

    Raises:
        DataError: the file is missing or the image is over ``max_pixels``.
        CorruptImageError: the file is not an image Pillow can identify.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Image.DecompressionBombError as err:
            raise DataError(f"{path}: image refused before decoding: {err}") from None
        except OSError as err:
            raise CorruptImageError(f"{path}: not a readable image ({err})") from None
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(
            f"{path}: image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
            "refused before decoding (pass a larger max_pixels= if the file is trusted)"
        )
    return width, height


def read_image(
    path: str | Path, mode: ImageMode = "RGB", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Decode a JPEG/PNG (or other format ``torchvision.io`` reads) into a ``uint8`` tensor.

    The size is checked from the header first (:func:`image_size`), then the bytes are decoded with
    ``torchvision.io.decode_image``. ``"RGB"`` turns grayscale into three equal channels and drops alpha;
    ``"GRAY"`` converts colour to one luma channel; ``"UNCHANGED"`` keeps the file's channels. Images stored
    with 16 bits per sample are scaled to 8 bits.

    Args:
        path: image file.
        mode: ``"RGB"``, ``"GRAY"`` or ``"UNCHANGED"``.
        max_pixels: pixel limit checked before decoding, see :func:`image_size`.

    Returns:
        The image as ``uint8``.

    Shape:
        ``(C, H, W)`` with ``C = 3`` for ``"RGB"``, ``1`` for ``"GRAY"``, the file's for ``"UNCHANGED"``.

    Raises:
        DataError: missing file, unknown mode, or image over ``max_pixels``.
        CorruptImageError: the file cannot be identified or decoded.
    """
    read_mode = _READ_MODES[check_mode(mode)]
    path = Path(path)
    image_size(path, max_pixels)
    try:
        image = decode_image(read_file(str(path)), read_mode)
    except RuntimeError as err:
        raise CorruptImageError(f"{path}: corrupt or truncated image ({err})") from None
    if image.dtype == torch.uint16:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def refuse_existing(paths: Iterable[str | Path], overwrite: bool) -> None:
    """Raise ``DataError`` naming the first of ``paths`` that exists, unless ``overwrite`` is true.

    Writers call this for every file they are about to write before writing any, so a refused write
    leaves nothing half-written behind.
    """
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise DataError(
                f"{path}: already exists; refusing to overwrite it (pass overwrite=True to replace)"
            )


def write_png(image: torch.Tensor, path: str | Path, overwrite: bool = False) -> Path:
    """Write a ``uint8`` image losslessly as PNG, creating parent folders.

    Args:
        image: ``uint8`` image with 1 or 3 channels.
        path: destination file.
        overwrite: replace an existing file; by default an existing file raises ``DataError``.

    Returns:
        The path written.

    Shape:
        ``image``: ``(C, H, W)``, ``C`` in ``{1, 3}``.
    """
    path = Path(path)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise DataError(
            f"{path}: can only write uint8 (C, H, W) images with 1 or 3 channels, got {image.dtype} {tuple(image.shape)}"
        )
    refuse_existing([path], overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_png(image.contiguous()).numpy().tobytes()
    with open(path, "wb" if overwrite else "xb") as f:
        f.write(data)
    return path


def find_corrupt_images(
    paths: Iterable[str | Path], mode: ImageMode = "RGB", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> list[int]:
    """Decode every image once and return the positions of those that are corrupt or unreadable.

    Datasets built with ``skip_corrupt=True`` call this at construction, drop these images and count them in
    ``dataset.skipped``. Missing files and images over ``max_pixels`` are not "corrupt": they still raise.

    Args:
        paths: image files.
        mode: decoding mode, see :func:`read_image`.
        max_pixels: pixel limit, see :func:`image_size`.

    Returns:
        Indices into ``paths`` of the files that raised :class:`CorruptImageError`.
    """
    corrupt = []
    for i, path in enumerate(paths):
        try:
            read_image(path, mode, max_pixels)
        except CorruptImageError:
            corrupt.append(i)
    return corrupt
