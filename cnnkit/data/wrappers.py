"""Dataset wrappers and the image geometry a run applies when it reads a user's images.

:class:`InMemory` holds decoded items; :class:`MappedItems` maps another dataset's items when read
(:class:`Letterboxed`, :class:`Resized`, :class:`InstancesToSemantic`). :func:`letterbox` and
:func:`resize_center_crop` are the same operations on one image, used again at prediction time, so that a
model sees its inputs at inference exactly as it saw them in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


class InMemory(Dataset):
    """A list of ``(image, target)`` items with the dataset's ``classes``."""

    def __init__(self, items: list[tuple[torch.Tensor, Any]], classes: Sequence[str]) -> None:
        self.items = items
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.items[index]


class MappedItems(Dataset):
    """A dataset whose items are another's, each passed through :meth:`map` when read (``classes`` kept)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.map(*self.dataset[index])

    def map(self, image: torch.Tensor, target: Any) -> tuple[torch.Tensor, Any]:
        """The item read from ``image`` and ``target``."""
        raise NotImplementedError


class Letterboxed(MappedItems):
    """Scale each image so its longer side is ``size``, place it top-left on a ``size x size`` zero canvas.

    Boxes are scaled by the same factor; ``masks`` (instances) and ``mask`` (semantic) are resized by
    nearest neighbour and padded with 0 (background).

    Shape:
        ``dataset[i]``: ``(C, H, W)`` -> ``(C, size, size)``; targets move with the image.
    """

    def __init__(self, dataset: Dataset, size: int) -> None:
        super().__init__(dataset)
        self.size = size

    def map(
        self, image: torch.Tensor, target: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return letterbox(image, target, self.size)


def letterbox(
    image: torch.Tensor, target: dict[str, torch.Tensor] | None, size: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Letterbox one image (and its target) to ``size x size``, see :class:`Letterboxed`.

    Returns:
        ``(image (C, size, size), target)``; the target also gets ``scale``, the factor applied, so that
        predictions map back to the original pixels by dividing by it.
    """
    import torch.nn.functional as F

    height, width = image.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", antialias=True)
    canvas = torch.zeros(image.shape[0], size, size, dtype=image.dtype)
    canvas[:, :new_h, :new_w] = resized[0].round().clamp(0, 255).to(image.dtype)
    out: dict[str, torch.Tensor] = {}
    for key, value in (target or {}).items():
        if key == "boxes":
            value = value * torch.tensor([new_w / width, new_h / height] * 2, dtype=value.dtype)
        elif key in ("masks", "mask"):
            stack = value.reshape(-1, height, width)[:, None].float()
            small = F.interpolate(stack, size=(new_h, new_w), mode="nearest")[:, 0].to(value.dtype)
            padded = torch.zeros(len(stack), size, size, dtype=value.dtype)
            padded[:, :new_h, :new_w] = small
            value = padded if key == "masks" else padded[0]
        out[key] = value
    out["scale"] = torch.tensor(scale)
    return canvas, out


class InstancesToSemantic(MappedItems):
    """COCO instance masks -> one semantic ``mask`` (``c + 1`` where an instance of class ``c`` is; later
    instances drawn over earlier ones)."""

    def map(
        self, image: torch.Tensor, target: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = torch.zeros(image.shape[-2:], dtype=torch.int64)
        for label, instance in zip(target["labels"].tolist(), target["masks"]):
            mask[instance.bool()] = label + 1
        return image, {"mask": mask}


class Resized(MappedItems):
    """Decode-time geometry for folders of photos: see :func:`resize_center_crop`."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        super().__init__(dataset)
        self.size = size

    def map(self, image: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
        return resize_center_crop(image, self.size), label


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased), then centre-crop to ``size x size``.

    Shape:
        - Input: ``(C, H, W)`` uint8
        - Output: ``(C, size, size)`` uint8
    """
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])


def image_mode(channels: int) -> str:
    """The :func:`cnnkit.data.read_image` mode giving ``channels`` channels."""
    return "GRAY" if channels == 1 else "RGB"
