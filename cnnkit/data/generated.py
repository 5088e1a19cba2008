"""Generated detection and segmentation sets: MNIST digits on a canvas, and coloured shapes.

Every item is drawn on demand from its own random stream, ``numpy.random.default_rng([seed, split, index])``
(``split`` 0 for ``"train"``, 1 for ``"val"``), so item ``i`` is the same whether it is read alone, first or
last, in any process, and a different ``seed`` gives a different set. The MNIST sets paste digits of the
bundled :class:`~cnnkit.data.MNIST5k`: its train split for ``"train"`` and its test split for ``"val"``, so no
digit appears in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from cnnkit.data.classification import MNIST5k
from cnnkit.errors import DataError, did_you_mean

_SPLITS = {"train": 0, "val": 1}
PLACEMENT_ATTEMPTS = 20
"""Random positions tried for each object before it is left out (so an item can hold fewer objects)."""

Box = tuple[int, int, int, int]


def _iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``xyxy`` boxes (the layout rule only; tasks use their own IoU)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


def _tight_crop(patch: np.ndarray) -> np.ndarray:
    """Crop a ``(h, w)`` patch to the bounding box of its non-zero pixels."""
    rows = np.flatnonzero(patch.any(axis=1))
    cols = np.flatnonzero(patch.any(axis=0))
    return patch[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _check_range(name: str, value: Sequence[float], low: float) -> tuple[float, float]:
    if len(value) != 2 or not low <= value[0] <= value[1]:
        raise DataError(f"{name} must be a (min, max) pair with {low} <= min <= max, got {tuple(value)}")
    return value[0], value[1]


class _GeneratedSet(Dataset):
    """Split, size, seed and the per-item random stream shared by the generated sets."""

    def __init__(self, split: str, size: int, image_size: int, seed: int) -> None:
        if split not in _SPLITS:
            raise DataError(
                f"unknown split {split!r}; expected 'train' or 'val'{did_you_mean(split, _SPLITS)}"
            )
        if size < 0 or image_size < 1:
            raise DataError(
                f"size must be >= 0 and image_size >= 1, got size={size}, image_size={image_size}"
            )
        self.split, self.size, self.image_size, self.seed = split, size, image_size, seed

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        """The random stream of item ``index`` (negative indices count from the end)."""
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a set of {self.size} items")
        return np.random.default_rng([self.seed, _SPLITS[self.split], index % self.size])

    def _place(
        self, rng: np.random.Generator, height: int, width: int, boxes: list[Box], max_iou: float
    ) -> Box | None:
        """Draw a position for an ``height x width`` object whose box overlaps none of ``boxes`` beyond ``max_iou``."""
        if height > self.image_size or width > self.image_size:
            return None
        for _ in range(PLACEMENT_ATTEMPTS):
            x, y = (
                int(rng.integers(0, self.image_size - width + 1)),
                int(rng.integers(0, self.image_size - height + 1)),
            )
            box = (x, y, x + width, y + height)
            if all(_iou(box, other) <= max_iou for other in boxes):
                return box
        return None


class MNISTDetection(_GeneratedSet):
    """MNIST digits pasted at random scales and places on a black canvas, with their boxes and classes.

    For each item: draw the number of digits uniformly from ``digits``; for each, draw a digit of the
    source split uniformly, a scale uniformly from ``scale``, resize the 28x28 digit to ``round(28 * scale)``
    pixels (bilinear with antialiasing), crop it to its non-zero pixels, and draw a position where its box
    overlaps every earlier box with IoU <= ``max_iou`` (20 tries, else the digit is left out). Digits are
    composited with a pixel-wise maximum, so each box is the tight box of that digit's non-zero pixels.

    Args:
        split: ``"train"`` (digits of MNIST5k train) or ``"val"`` (digits of MNIST5k test).
        size: number of items.
        image_size: canvas side in pixels.
        digits: ``(min, max)`` digits per image, inclusive.
        scale: ``(min, max)`` resize factor of the 28x28 digit.
        max_iou: largest IoU allowed between any two boxes of an item.
        seed: seed of the set; see the module docs for how items are drawn.

    Returns from ``dataset[i]``:
        ``(image uint8 (1, S, S), {"labels": int64 (N,), "boxes": float32 (N, 4) xyxy px})``, ``S = image_size``.
    """

    classes = [str(d) for d in range(10)]

    def __init__(
        self,
        split: str = "train",
        size: int = 1000,
        image_size: int = 128,
        digits: tuple[int, int] = (1, 4),
        scale: tuple[float, float] = (0.75, 2.0),
        max_iou: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(split, size, image_size, seed)
        self.digits = tuple(int(v) for v in _check_range("digits", digits, 0))
        self.scale = _check_range("scale", scale, 1 / 28)
        self.max_iou = max_iou
        source = MNIST5k("train" if split == "train" else "test", pad_to_32=False)
        self._source_images = source.images[:, 0]
        self._source_labels = source.labels

    def _layout(self, index: int) -> tuple[list[int], list[Box], list[np.ndarray]]:
        """Draw item ``index``: digit labels, their boxes, and their cropped uint8 patches."""
        rng = self._rng(index)
        labels: list[int] = []
        boxes: list[Box] = []
        patches: list[np.ndarray] = []
        for _ in range(int(rng.integers(self.digits[0], self.digits[1] + 1))):
            k = int(rng.integers(len(self._source_labels)))
            side = max(1, round(28 * float(rng.uniform(*self.scale))))
            digit = self._source_images[k].to(torch.float32)[None, None]
            resized = F.interpolate(
                digit, size=(side, side), mode="bilinear", antialias=True, align_corners=False
            )
            patch = _tight_crop(np.clip(np.rint(resized[0, 0].numpy()), 0, 255).astype(np.uint8))
            box = self._place(rng, patch.shape[0], patch.shape[1], boxes, self.max_iou)
            if box is not None:
                labels.append(int(self._source_labels[k]))
                boxes.append(box)
                patches.append(patch)
        return labels, boxes, patches

    def _paste(self, boxes: list[Box], patches: list[np.ndarray]) -> np.ndarray:
        """Each patch alone on its own blank canvas, stacked: ``(N, S, S)`` uint8."""
        layers = np.zeros((len(boxes), self.image_size, self.image_size), dtype=np.uint8)
        for layer, (x1, y1, x2, y2), patch in zip(layers, boxes, patches):
            layer[y1:y2, x1:x2] = patch
        return layers

    @staticmethod
    def _target(labels: list[int], boxes: list[Box]) -> dict[str, torch.Tensor]:
        return {
            "labels": torch.tensor(labels, dtype=torch.int64),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels, boxes, patches = self._layout(index)
        layers = self._paste(boxes, patches)
        image = layers.max(axis=0, initial=0)
        return torch.from_numpy(image).unsqueeze(0), self._target(labels, boxes)


class MNISTSegmentation(MNISTDetection):
    """The canvases of :class:`MNISTDetection` (same arguments, same items) with masks.

    Instance ``masks[j]`` holds the pixels of digit ``j`` with intensity >= ``threshold``; where digits
    overlap, a pixel may be in both. The semantic ``mask`` gives each pixel ``c + 1`` for the class ``c`` of
    the brightest digit there when that intensity is >= ``threshold`` (the earlier digit on a tie), else
    ``0`` for background. Boxes stay the tight boxes of all non-zero pixels, so masks lie inside them.

    Args:
        threshold: digit intensity (0..255) from which a pixel belongs to the digit.
        **kwargs: the arguments of :class:`MNISTDetection`.

    Returns from ``dataset[i]``:
        ``(image uint8 (1, S, S), target)`` with ``labels`` int64 ``(N,)``, ``boxes`` float32 ``(N, 4)``,
        ``masks`` uint8 ``(N, S, S)`` (0/1) and ``mask`` int64 ``(S, S)``.
    """

    def __init__(self, *args: object, threshold: int = 128, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.threshold = threshold

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels, boxes, patches = self._layout(index)
        layers = self._paste(boxes, patches)
        target = self._target(labels, boxes)
        target["masks"] = torch.from_numpy((layers >= self.threshold).astype(np.uint8))
        image = layers.max(axis=0, initial=0)
        classes = np.asarray(labels, dtype=np.int64)[layers.argmax(axis=0)] + 1 if labels else 0
        target["mask"] = torch.from_numpy(np.where(image >= self.threshold, classes, 0).astype(np.int64))
        return torch.from_numpy(image).unsqueeze(0), target


def _shape_mask(kind: int, side: int) -> torch.Tensor:
    """A ``side x side`` bool mask of a circle (0), square (1) or upward triangle (2), tested at pixel centres."""
    centres = torch.arange(side, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    if kind == 0:
        return (x - side / 2) ** 2 + (y - side / 2) ** 2 <= (side / 2) ** 2
    if kind == 1:
        return torch.ones(side, side, dtype=torch.bool)
    # apex (side/2, 0), base from (0, side) to (side, side): inside where |x - side/2| <= y / 2
    return (x - side / 2).abs() <= y / 2


class Shapes(_GeneratedSet):
    """Coloured circles, squares and triangles on a dark background, for quick checks of any pipeline.

    For each item: a background colour with each channel uniform in ``[0, 64)``; the number of shapes
    uniform in ``shapes``; for each, a class uniform in {circle, square, triangle}, a side uniform in
    ``scale * image_size`` (rounded), a colour with each channel uniform in ``[128, 256)``, and a position
    whose box overlaps no earlier box (20 tries, else the shape is left out). Shapes never overlap,
    so masks are exact and boxes are the tight boxes of the masks.

    Args:
        split: ``"train"`` or ``"val"`` (different random streams).
        size: number of items.
        image_size: canvas side in pixels.
        shapes: ``(min, max)`` shapes per image, inclusive.
        scale: ``(min, max)`` shape side as a fraction of ``image_size``.
        seed: seed of the set.

    Returns from ``dataset[i]``:
        ``(image uint8 (3, S, S), target)`` with ``labels`` int64 ``(N,)`` (0 circle, 1 square, 2 triangle),
        ``boxes`` float32 ``(N, 4)``, ``masks`` uint8 ``(N, S, S)`` and ``mask`` int64 ``(S, S)`` (class + 1).
    """

    classes = ["circle", "square", "triangle"]

    def __init__(
        self,
        split: str = "train",
        size: int = 1000,
        image_size: int = 64,
        shapes: tuple[int, int] = (1, 3),
        scale: tuple[float, float] = (0.2, 0.45),
        seed: int = 0,
    ) -> None:
        super().__init__(split, size, image_size, seed)
        self.shapes = tuple(int(v) for v in _check_range("shapes", shapes, 0))
        self.scale = _check_range("scale", scale, 0.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = self._rng(index)
        size = self.image_size
        image = torch.from_numpy(rng.integers(0, 64, size=3).astype(np.uint8))[:, None, None].repeat(
            1, size, size
        )
        labels: list[int] = []
        boxes: list[Box] = []
        masks: list[torch.Tensor] = []
        for _ in range(int(rng.integers(self.shapes[0], self.shapes[1] + 1))):
            kind = int(rng.integers(3))
            side = max(2, round(float(rng.uniform(*self.scale)) * size))
            colour = torch.from_numpy(rng.integers(128, 256, size=3).astype(np.uint8))
            place = self._place(rng, side, side, boxes, 0.0)
            if place is None:
                continue
            x1, y1, x2, y2 = place
            full = torch.zeros(size, size, dtype=torch.bool)
            full[y1:y2, x1:x2] = _shape_mask(kind, side)
            image[:, full] = colour[:, None]
            rows, cols = full.any(dim=1).nonzero().flatten(), full.any(dim=0).nonzero().flatten()
            labels.append(kind)
            boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
            masks.append(full)
        stacked = (
            torch.stack(masks).to(torch.uint8) if masks else torch.zeros(0, size, size, dtype=torch.uint8)
        )
        label_tensor = torch.tensor(labels, dtype=torch.int64)
        target = {
            "labels": label_tensor,
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "masks": stacked,
            "mask": (stacked.to(torch.int64) * (label_tensor + 1)[:, None, None]).sum(dim=0),
        }
        return image, target
