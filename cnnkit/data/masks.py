"""Semantic segmentation from an image folder and a mask folder (one single-channel PNG per image, same stem).

A mask pixel holds ``0`` for background, ``c + 1`` for class ``c``, or the ignore value (255) for pixels
that do not count: the same numbering as :class:`cnnkit.data.MNISTSegmentation`'s ``mask`` and as the
``category_id`` that :func:`cnnkit.data.write_coco` writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cnnkit.data.image_io import (
    DEFAULT_MAX_PIXELS,
    CorruptImageError,
    ImageMode,
    check_mode,
    find_corrupt_images,
    image_size,
    read_image,
    refuse_existing,
    write_png,
)
from cnnkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IGNORE_INDEX = 255


def read_mask(
    path: str | Path,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Read a single-channel mask PNG (mode ``L``, ``P`` palette indices, or 16-bit) as class numbers.

    Args:
        path: mask file.
        num_classes: ``K``; values must be in ``[0, K]`` (``0`` background) or equal ``ignore_index``.
        ignore_index: value for pixels that do not count.
        max_pixels: masks over this many pixels are refused before decoding.

    Returns:
        int64 class map.

    Shape:
        ``(H, W)``.
    """
    path = Path(path)
    image_size(path, max_pixels)
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: mask must be single-channel (L, P or 16-bit), not mode {im.mode}")
            mask = torch.from_numpy(np.asarray(im, dtype=np.int64).copy())
    except OSError as err:
        raise CorruptImageError(f"{path}: corrupt or truncated mask ({err})") from None
    bad = (mask > num_classes) & (mask != ignore_index) | (mask < 0)
    if bad.any():
        values = sorted(set(mask[bad].unique().tolist()))
        raise DataError(
            f"{path}: mask values {values[:5]} are out of range: expected 0 (background), 1..{num_classes} "
            f"(class + 1) or {ignore_index} (ignore)"
        )
    return mask


class MaskFolder(Dataset):
    """Semantic segmentation pairs: ``images_dir/<stem>.<ext>`` with ``masks_dir/<stem>.png``.

    Args:
        images_dir: folder of images (sorted by name).
        masks_dir: folder of masks, one PNG per image with the same stem.
        classes: class names (background excluded); class ``c`` is mask value ``c + 1``.
        extensions: image file endings to include, case-insensitive.
        mode: image decoding mode, ``"RGB"``, ``"GRAY"`` or ``"UNCHANGED"``.
        ignore_index: mask value for pixels that do not count (kept as is in ``mask``).
        skip_corrupt: drop pairs whose image is corrupt at construction, counted in ``skipped``.
        max_pixels: images over this many pixels are refused before decoding.

    Returns from ``dataset[i]``:
        ``(image uint8 (C, H, W), {"mask": int64 (H, W)})``.
    """

    def __init__(
        self,
        images_dir: str | Path,
        masks_dir: str | Path,
        classes: Sequence[str],
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        mode: ImageMode = "RGB",
        ignore_index: int = IGNORE_INDEX,
        skip_corrupt: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        images_dir, masks_dir = Path(images_dir), Path(masks_dir)
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DataError(f"{folder}: folder not found")
        self.classes = list(classes)
        self.mode = check_mode(mode)
        self.ignore_index = ignore_index
        self.max_pixels = max_pixels
        suffixes = {e.lower() for e in extensions}
        pairs = []
        for path in sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in suffixes):
            mask_path = masks_dir / f"{path.stem}.png"
            if not mask_path.is_file():
                raise DataError(f"{mask_path}: mask file not found for image {path}")
            pairs.append((path, mask_path))
        corrupt = set(find_corrupt_images([p for p, _ in pairs], mode, max_pixels)) if skip_corrupt else set()
        self.skipped_files = [pairs[i][0] for i in sorted(corrupt)]
        self.skipped = len(self.skipped_files)
        self.pairs = [pair for i, pair in enumerate(pairs) if i not in corrupt]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path, self.mode, self.max_pixels)
        mask = read_mask(mask_path, len(self.classes), self.ignore_index, self.max_pixels)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                f"{image.shape[-1]}x{image.shape[-2]}"
            )
        return image, {"mask": mask}


def write_mask_folder(
    dataset: Sequence[tuple[torch.Tensor, dict[str, Any]]],
    images_dir: str | Path,
    masks_dir: str | Path,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a semantic segmentation dataset as ``images_dir/{i:06d}.png`` and ``masks_dir/{i:06d}.png``.

    Args:
        dataset: items ``(image uint8 (C, H, W), target)`` whose target holds ``mask`` ``(H, W)`` with values
            in ``[0, 255]``.
        images_dir: folder for the images.
        masks_dir: folder for the 8-bit single-channel masks.
        overwrite: replace existing files; by default any existing file is refused before anything is written.

    Returns:
        ``(images_dir, masks_dir)``.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    names = [f"{i:06d}.png" for i in range(len(dataset))]
    refuse_existing([*(images_dir / n for n in names), *(masks_dir / n for n in names)], overwrite)
    for i, name in enumerate(names):
        image, target = dataset[i]
        mask = target["mask"]
        if mask.min() < 0 or mask.max() > 255:
            raise DataError(f"item {i}: mask values must be in [0, 255] to be written as an 8-bit PNG")
        write_png(image, images_dir / name, overwrite)
        write_png(mask.to(torch.uint8).unsqueeze(0), masks_dir / name, overwrite)
    return images_dir, masks_dir
