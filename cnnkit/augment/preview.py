"""Preview grids: original and augmented samples side by side, with boxes and masks drawn on them.

Sample sources: ``photos`` (four real photographs from ``skimage.data`` with hand-placed boxes and rough
elliptical instance masks inside them), ``mnist-det`` (:class:`cnnkit.data.MNISTDetection`, boxes) and
``mnist-seg`` (:class:`cnnkit.data.MNISTSegmentation`, boxes and instance masks).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from cnnkit.augment.base import Compose, Target, Transform
from cnnkit.augment.color import ColorJitter
from cnnkit.augment.erasing import RandomErasing
from cnnkit.augment.geometric import HorizontalFlip, RandomResizedCrop, RandomRotation, crop_resize
from cnnkit.errors import ConfigError, did_you_mean

DATASETS = ("photos", "mnist-det", "mnist-seg")

# (skimage.data name, [(box xyxy in the original photo, class name), ...]), placed by eye.
PHOTOS: tuple[tuple[str, tuple[tuple[tuple[float, float, float, float], str], ...]], ...] = (
    (
        "astronaut",
        (((155, 20, 300, 180), "face"), ((355, 0, 470, 280), "shuttle"), ((275, 340, 510, 512), "helmet")),
    ),
    ("coffee", (((170, 15, 420, 305), "cup"), ((320, 65, 425, 328), "spoon"))),
    (
        "chelsea",
        (((135, 85, 205, 150), "eye"), ((295, 108, 345, 165), "eye"), ((235, 220, 290, 265), "nose")),
    ),
    (
        "rocket",
        (((300, 125, 340, 410), "rocket"), ((165, 120, 210, 427), "tower"), ((435, 120, 475, 427), "tower")),
    ),
)
PHOTO_CLASSES = ["face", "shuttle", "helmet", "cup", "spoon", "eye", "nose", "rocket", "tower"]


def _ellipse_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 ``(N, H, W)`` masks of the ellipses inscribed in ``boxes``."""
    ys = torch.arange(size[0]).view(1, -1, 1) + 0.5
    xs = torch.arange(size[1]).view(1, 1, -1) + 0.5
    x1, y1, x2, y2 = (v.view(-1, 1, 1) for v in boxes.unbind(1))
    u = (xs - (x1 + x2) / 2) / ((x2 - x1) / 2)
    v = (ys - (y1 + y2) / 2) / ((y2 - y1) / 2)
    return (u**2 + v**2 <= 1).to(torch.uint8)


def photo_samples(size: int = 256) -> tuple[Tensor, list[Target], list[str]]:
    """The four photos, centre-cropped to squares and resized to ``size``, with their boxes and masks.

    Returns:
        ``(images uint8 (4, 3, size, size), targets, class names)``.
    """
    try:
        from skimage import data
    except ImportError as err:
        raise ConfigError(
            "the 'photos' samples come from scikit-image: pip install 'cnnkit[preview]' (or scikit-image), "
            "or use --dataset mnist-det"
        ) from err

    images, targets = [], []
    for name, objects in PHOTOS:
        photo = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).unsqueeze(0)
        h, w = photo.shape[-2:]
        side = min(h, w)
        boxes = torch.tensor([box for box, _ in objects], dtype=torch.float32)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([PHOTO_CLASSES.index(label) for _, label in objects]),
            "masks": _ellipse_masks(boxes, (h, w)),
        }
        crop = torch.tensor([[(w - side) // 2, (h - side) // 2, side, side]])
        image, moved = crop_resize(photo, [target], crop, (size, size))
        images.append(image)
        targets.extend(moved)
    return torch.cat(images), targets, PHOTO_CLASSES


def dataset_samples(name: str, n: int, seed: int = 0) -> tuple[Tensor, list[Target], list[str]]:
    """``n`` samples of preview source ``name`` (see the module docs), as a batch with targets and class names."""
    if name not in DATASETS:
        raise ConfigError(
            f"unknown preview dataset {name!r}{did_you_mean(name, DATASETS)}; choose from {DATASETS}"
        )
    if n < 1:
        raise ConfigError(f"number of samples must be at least 1, got {n}")
    if name == "photos":
        images, targets, classes = photo_samples()
        picks = [i % len(targets) for i in range(n)]
        return images[picks], [targets[i] for i in picks], classes
    from cnnkit.data import MNISTDetection, MNISTSegmentation

    dataset = (MNISTDetection if name == "mnist-det" else MNISTSegmentation)(split="val", size=n, seed=seed)
    items = [dataset[i] for i in range(n)]
    return torch.stack([image for image, _ in items]), [target for _, target in items], list(dataset.classes)


def default_pipeline(size: int, hue: bool = True) -> Transform:
    """The pipeline previewed without ``--config``: crop, flip, rotation, colour jitter, erasing."""
    return Compose(
        [
            RandomResizedCrop(size, scale=(0.25, 1.0)),
            HorizontalFlip(),
            RandomRotation(15, interpolation="bilinear"),
            ColorJitter(0.4, 0.4, 0.4, 0.1 if hue else None),
            RandomErasing(p=0.5, scale=(0.02, 0.1)),
        ]
    )


_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


def draw_sample(image: Tensor, target: Target | None, classes: list[str] | None = None) -> Tensor:
    """A uint8 RGB ``(3, H, W)`` picture of one sample with its masks (translucent) and boxes drawn.

    Floating images are shown as ``clamp(x, 0, 1) * 255``; one-channel images as grey.
    """
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    image = image.cpu().expand(3, -1, -1) if image.shape[0] == 1 else image.cpu()
    if not target:
        return image
    labels = target.get("labels", torch.zeros(0, dtype=torch.long)).cpu().tolist()
    colors = [_PALETTE[label % len(_PALETTE)] for label in labels]
    if "masks" in target and target["masks"].shape[0]:
        image = draw_segmentation_masks(image, target["masks"].cpu().bool(), alpha=0.35, colors=colors)
    elif "mask" in target:
        semantic = target["mask"].cpu()
        present = [c for c in semantic.unique().tolist() if c > 0]
        if present:
            masks = torch.stack([semantic == c for c in present])
            image = draw_segmentation_masks(
                image, masks, 0.35, [_PALETTE[c % len(_PALETTE)] for c in present]
            )
    if "boxes" in target and target["boxes"].shape[0]:
        names = [classes[label] if classes else str(label) for label in labels]
        image = draw_bounding_boxes(image, target["boxes"].cpu(), names, colors, width=2)
    return image


def preview_grid(
    images: Tensor,
    targets: list[Target] | None,
    augmented: Tensor,
    augmented_targets: list[Target] | None,
    classes: list[str] | None = None,
    columns: int = 8,
) -> Tensor:
    """A uint8 ``(3, H, W)`` grid: a row of originals above the row of their augmented versions, repeated.

    Tiles of different sizes are padded (not resized), so the pictures keep their true pixel sizes.
    """
    n = images.shape[0]
    originals = [draw_sample(images[i], targets[i] if targets else None, classes) for i in range(n)]
    changed = [
        draw_sample(augmented[i], augmented_targets[i] if augmented_targets else None, classes)
        for i in range(n)
    ]
    th = max(t.shape[1] for t in originals + changed)
    tw = max(t.shape[2] for t in originals + changed)

    def pad(tile: Tensor) -> Tensor:
        out = torch.full((3, th, tw), 40, dtype=torch.uint8)
        out[:, : tile.shape[1], : tile.shape[2]] = tile
        return out

    columns = max(1, min(columns, n))
    tiles = []
    for start in range(0, n, columns):
        row = list(range(start, min(start + columns, n)))
        blank = [torch.full((3, th, tw), 40, dtype=torch.uint8)] * (columns - len(row))
        tiles += [pad(originals[i]) for i in row] + blank + [pad(changed[i]) for i in row] + blank
    return make_grid(tiles, nrow=columns, padding=4, pad_value=255)
