"""The dataset behind every detection reader: one record per image, decoded and checked on access."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cnnkit.data.image_io import DEFAULT_MAX_PIXELS, ImageMode, check_mode, find_corrupt_images, read_image
from cnnkit.data.targets import DEFAULT_BOX_TOLERANCE, check_boxes, check_labels
from cnnkit.errors import DataError


@dataclass
class ImageRecord:
    """What an annotation file says about one image.

    Attributes:
        path: the image file.
        source: where the annotations came from, for error messages (file, and image id or line).
        labels: class indices ``(N,)`` in ``[0, len(classes))``.
        boxes: ``(N, 4)`` boxes in the reader's stored format (``xyxy`` pixels unless the reader says otherwise).
        size: ``(width, height)`` the annotation file declares, checked against the decoded image; ``None``
            when the format does not declare one.
        extra: format-specific annotation data (for example COCO segmentations).
    """

    path: Path
    source: str
    labels: torch.Tensor
    boxes: torch.Tensor
    size: tuple[int, int] | None = None
    extra: Any = None


class AnnotatedImages(Dataset):
    """A list of :class:`ImageRecord`; ``dataset[i]`` decodes image ``i`` and returns it with its target.

    Every item is checked when it is read: the decoded size must match the declared size, labels must be
    in range, and boxes must lie inside the image within ``box_tolerance`` pixels (and are clipped to it).

    Args:
        records: one record per image, in dataset order.
        classes: class names; label ``i`` is ``classes[i]``.
        mode: ``"RGB"``, ``"GRAY"`` or ``"UNCHANGED"`` (see :func:`cnnkit.data.read_image`).
        skip_corrupt: decode every image once now and drop the corrupt ones (counted in ``skipped``,
            listed in ``skipped_files``); otherwise a corrupt image raises when it is read.
        max_pixels: images over this many pixels are refused before decoding.
        box_tolerance: pixels a box may stick out of the image.

    Returns from ``dataset[i]``:
        ``(image, target)``: image uint8 ``(C, H, W)``; target ``{"labels": int64 (N,), "boxes": float32 (N, 4)}``
        plus format extras (``masks`` uint8 ``(N, H, W)`` for COCO read with masks).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        classes: list[str],
        mode: ImageMode = "RGB",
        skip_corrupt: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        box_tolerance: float = DEFAULT_BOX_TOLERANCE,
    ) -> None:
        self.classes = list(classes)
        self.mode = check_mode(mode)
        self.max_pixels = max_pixels
        self.box_tolerance = box_tolerance
        for record in records:
            if not record.path.is_file():
                raise DataError(f"{record.path}: image file not found (listed in {record.source})")
        corrupt = (
            set(find_corrupt_images([r.path for r in records], mode, max_pixels)) if skip_corrupt else set()
        )
        self.skipped_files = [records[i].path for i in sorted(corrupt)]
        self.skipped = len(self.skipped_files)
        self.records = [r for i, r in enumerate(records) if i not in corrupt]

    def __len__(self) -> int:
        return len(self.records)

    def pixel_boxes(self, record: ImageRecord, width: int, height: int) -> torch.Tensor:
        """Return a record's boxes as ``xyxy`` pixels for a ``width x height`` image (stored format here)."""
        return record.boxes

    def target_extras(self, record: ImageRecord, width: int, height: int) -> dict[str, torch.Tensor]:
        """Return format-specific target entries for a record (none here)."""
        return {}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[index]
        image = read_image(record.path, self.mode, self.max_pixels)
        height, width = image.shape[-2:]
        if record.size is not None and record.size != (width, height):
            raise DataError(
                f"{record.path}: image is {width}x{height} but {record.source} declares "
                f"{record.size[0]}x{record.size[1]}"
            )
        target = {
            "labels": check_labels(record.labels, len(self.classes), record.source),
            "boxes": check_boxes(
                self.pixel_boxes(record, width, height), width, height, record.source, self.box_tolerance
            ),
        }
        target.update(self.target_extras(record, width, height))
        return image, target


def dataset_classes(dataset: object, classes: Sequence[str] | None) -> list[str]:
    """Return ``classes`` if given, else ``dataset.classes``; writers use it to name categories.

    Raises:
        DataError: neither is available.
    """
    if classes is not None:
        return list(classes)
    if not hasattr(dataset, "classes"):
        raise DataError(
            f"{type(dataset).__name__} has no 'classes' attribute; pass classes=[...] to the writer"
        )
    return list(dataset.classes)
