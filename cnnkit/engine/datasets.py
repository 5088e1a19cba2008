"""The datasets a run names with ``data=``: per task, what ``cnnkit train`` / ``eval`` read.

==============  ===========================================================================================
task            ``data=``
==============  ===========================================================================================
classification  ``mnist5k`` (bundled); ``imagefolder:ROOT`` (``ROOT/train/<class>/*``, ``ROOT/val/<class>/*``)
detection       ``mnist-det``, ``shapes`` (generated); ``coco:ROOT``, ``yolo:ROOT``, ``voc:ROOT``
segmentation    ``mnist-seg``, ``shapes`` (generated); ``masks:ROOT``, ``coco:ROOT`` (polygons or RLE)
==============  ===========================================================================================

A user's own data has a ``train`` and a ``val`` split (``valid`` and ``test`` are accepted for ``val``):

- ``coco:ROOT``: ``ROOT/<split>.json`` with images under ``ROOT/<split>/`` (what :func:`cnnkit.data.write_coco`
  writes), or COCO's own ``ROOT/annotations/instances_<split>2017.json`` with ``ROOT/<split>2017/``;
- ``yolo:ROOT``: ``ROOT/<split>/images`` and ``ROOT/<split>/labels`` (:func:`cnnkit.data.write_yolo`), class
  names from ``ROOT/data.yaml`` or ``ROOT/<split>/data.yaml``;
- ``voc:ROOT``: ``ROOT/<split>/`` VOC folders (:func:`cnnkit.data.write_voc`), or one VOC folder with
  ``ImageSets/Main/<split>.txt``; class names from ``ROOT/classes.txt`` (one per line), else VOC's 20;
- ``masks:ROOT``: ``ROOT/<split>/images`` and ``ROOT/<split>/masks`` (mask PNGs, ``0`` background, ``c + 1``
  class ``c``, 255 ignored), class names from ``ROOT/classes.txt``.

Images of a user's detection or segmentation set are letterboxed to ``data.image_size`` (default
:data:`DEFAULT_IMAGE_SIZE`): scaled so the longer side fits, placed at the top-left corner, the rest
zero-padded; boxes are scaled with them and masks resized by nearest neighbour. The generated sets are drawn
once per run from fixed seeds (train 0, held-out val 1) and kept in memory.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from cnnkit.engine.config import TrainConfig
from cnnkit.errors import ConfigError, DataError, did_you_mean

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
DEFAULT_IMAGE_SIZE = 512
"""Letterbox side of a user's detection / segmentation images when ``data.image_size`` is not set."""
GENERATED_SIZES = {"train": 4000, "val": 500}
"""Items of a generated set per split when ``data.train_size`` / ``data.val_size`` are not set."""
GENERATED_SEEDS = {"train": 0, "val": 1}
VOC_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()
DATA_BY_TASK = {
    "classification": "mnist5k, imagefolder:PATH",
    "detection": "mnist-det, shapes, coco:PATH, yolo:PATH, voc:PATH",
    "segmentation": "mnist-seg, shapes, masks:PATH, coco:PATH",
}


@dataclass
class RunData:
    """Train and validation datasets with what the model and task need to know about them.

    ``classes`` are the object classes (no background); ``mean``/``std`` are ``None`` when the model's
    (ImageNet) statistics apply.
    """

    train: Dataset
    val: Dataset
    classes: list[str]
    in_chans: int
    image_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


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


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(dataset):
        return dataset
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    if isinstance(getattr(dataset, "images", None), torch.Tensor):
        # Keep the in-memory fast path: slice the tensors instead of wrapping in a Subset.
        sliced = object.__new__(type(dataset))
        sliced.__dict__.update(dataset.__dict__)
        sliced.images, sliced.labels = dataset.images[idx], dataset.labels[idx]
        return sliced
    return Subset(dataset, idx.tolist())


def build_data(config: TrainConfig) -> RunData:
    """The datasets ``config.data.name`` names for ``config.task`` (see the module docs).

    Raises:
        ConfigError: a data name the task does not know.
        DataError: a folder layout that does not fit (missing split folders or files, no images).
    """
    builders = {
        "classification": _classification,
        "detection": _detection,
        "segmentation": _segmentation,
    }
    if config.task not in builders:
        raise ConfigError(
            f"unknown task {config.task!r}; choose one of {', '.join(builders)}"
            + did_you_mean(config.task, builders)
        )
    data = builders[config.task](config)
    data.train = _subset(data.train, config.data.train_size, config.seed)
    data.val = _subset(data.val, config.data.val_size, config.seed + 1)
    return data


def _unknown(config: TrainConfig) -> ConfigError:
    return ConfigError(
        f"data={config.data.name!r} is not a {config.task} dataset: use {DATA_BY_TASK[config.task]}"
    )


def _classification(config: TrainConfig) -> RunData:
    from cnnkit.data import ImageFolder, MNIST5k
    from cnnkit.models.registry import model_card

    name = config.data.name
    if name == "mnist5k":
        train, val = MNIST5k("train", pad_to_32=True), MNIST5k("test", pad_to_32=True)
        return RunData(train, val, list(MNIST5k.classes), 1, 32, MNIST_MEAN, MNIST_STD)
    if not name.startswith("imagefolder:"):
        raise _unknown(config)
    root = _root(name)
    train_dir, val_dir = _split_dirs(root, "one folder per class")
    card = model_card(config.model)
    size = config.data.image_size or card.input_size[1]
    chans = card.input_size[0]
    mode = image_mode(chans)
    train_raw, val_raw = ImageFolder(train_dir, mode=mode), ImageFolder(val_dir, mode=mode)
    if train_raw.classes != val_raw.classes:
        raise DataError(
            f"{root}: train classes {train_raw.classes} differ from {val_dir.name} classes {val_raw.classes}"
        )
    return RunData(
        _Resized(train_raw, size), _Resized(val_raw, size), list(train_raw.classes), chans, size, None, None
    )


def _generated(config: TrainConfig, keep: Sequence[str]) -> RunData:
    from cnnkit.data import MNISTDetection, MNISTSegmentation, Shapes

    name = config.data.name
    size = config.data.image_size or 128
    kinds = {"mnist-det": MNISTDetection, "mnist-seg": MNISTSegmentation, "shapes": Shapes}
    kind = kinds[name]
    if kind is MNISTDetection and "mask" in keep:
        kind = MNISTSegmentation  # the same digits at the same places, with their masks
    splits = {}
    for split in ("train", "val"):
        count = getattr(config.data, f"{split}_size") or GENERATED_SIZES[split]
        dataset = kind(split, size=count, image_size=size, seed=GENERATED_SEEDS[split])
        items = []
        for i in range(len(dataset)):
            image, target = dataset[i]
            items.append((image, {k: v for k, v in target.items() if k in keep}))
        splits[split] = InMemory(items, dataset.classes)
    in_chans = splits["train"][0][0].shape[0] if len(splits["train"]) else 1
    mean, std = (MNIST_MEAN, MNIST_STD) if name != "shapes" else ((0.5,) * in_chans, (0.25,) * in_chans)
    return RunData(splits["train"], splits["val"], list(dataset.classes), in_chans, size, mean, std)


def _detection(config: TrainConfig) -> RunData:
    name = config.data.name
    instance = config.model == "mask_rcnn"
    keep = ("boxes", "labels", "masks") if instance else ("boxes", "labels")
    if name in ("mnist-det", "mnist-seg", "shapes"):
        return _generated(config, keep)
    kind, _, _ = name.partition(":")
    if kind not in ("coco", "yolo", "voc"):
        raise _unknown(config)
    return _user_annotated(config, kind, with_masks=instance)


def _segmentation(config: TrainConfig) -> RunData:
    name = config.data.name
    if config.model == "mask_rcnn":
        if name.startswith("masks:"):
            raise ConfigError("mask_rcnn needs instance masks: use data=mnist-seg, shapes or coco:PATH")
        return _detection(config)
    if name in ("mnist-seg", "shapes"):
        return _generated(config, ("mask",))
    kind, _, _ = name.partition(":")
    if kind == "coco":
        return _user_annotated(config, "coco", with_masks=True, semantic=True)
    if kind != "masks":
        raise _unknown(config)
    from cnnkit.data import MaskFolder

    root = _root(name)
    classes = _classes_file(root, required=True)
    train_dir, val_dir = _split_dirs(root, "images/ and masks/")
    size = config.data.image_size or DEFAULT_IMAGE_SIZE
    mode = image_mode(_channels(config))
    sets = [
        Letterboxed(MaskFolder(d / "images", d / "masks", classes, mode=mode), size)
        for d in (train_dir, val_dir)
    ]
    return RunData(sets[0], sets[1], classes, _channels(config), size, None, None)


def _user_annotated(config: TrainConfig, kind: str, with_masks: bool, semantic: bool = False) -> RunData:
    from cnnkit.data import read_coco, read_voc, read_yolo

    root = _root(config.data.name)
    mode = image_mode(_channels(config))
    if kind == "yolo":
        _split_dirs(root, "images/ and labels/")  # both splits exist, before reading either
    datasets = []
    for split in ("train", "val"):
        if kind == "coco":
            json_path, image_dir = _coco_split(root, split)
            dataset = read_coco(json_path, image_dir, with_masks=with_masks, mode=mode)
        elif kind == "yolo":
            folder = _split_dir(root, split, "images/ and labels/")
            names_file = next((p for p in (root / "data.yaml", folder / "data.yaml") if p.is_file()), None)
            if names_file is None:
                raise DataError(f"{root}: no data.yaml with the class names (looked in {root} and {folder})")
            from cnnkit.data.yolo import read_yolo_names

            dataset = read_yolo(folder, read_yolo_names(names_file), mode=mode)
        else:
            classes = _classes_file(root, required=False) or VOC_CLASSES
            sets_file = root / "ImageSets" / "Main" / f"{split}.txt"
            if sets_file.is_file():
                dataset = read_voc(root, classes, image_set=split, mode=mode)
            else:
                dataset = read_voc(
                    _split_dir(root, split, "Annotations/ and JPEGImages/"), classes, mode=mode
                )
        datasets.append(dataset)
    classes = list(datasets[0].classes)
    size = config.data.image_size or DEFAULT_IMAGE_SIZE
    wrapped = [Letterboxed(d, size) for d in datasets]
    if semantic:
        wrapped = [_InstancesToSemantic(d) for d in wrapped]
    return RunData(wrapped[0], wrapped[1], classes, _channels(config), size, None, None)


class _InstancesToSemantic(MappedItems):
    """COCO instance masks -> one semantic ``mask`` (``c + 1`` where an instance of class ``c`` is; later
    instances drawn over earlier ones)."""

    def map(
        self, image: torch.Tensor, target: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = torch.zeros(image.shape[-2:], dtype=torch.int64)
        for label, instance in zip(target["labels"].tolist(), target["masks"]):
            mask[instance.bool()] = label + 1
        return image, {"mask": mask}


class _Resized(MappedItems):
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


def _channels(config: TrainConfig) -> int:
    """Input channels for a user's images: ``model_kwargs.in_chans`` if set, else 3 (RGB)."""
    return int(config.model_kwargs.get("in_chans", 3))


def _root(name: str) -> pathlib.Path:
    root = pathlib.Path(name.partition(":")[2]).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    return root


def _split_dir(root: pathlib.Path, split: str, holds: str) -> pathlib.Path:
    names = ("train",) if split == "train" else ("val", "valid", "test")
    found = next((root / n for n in names if (root / n).is_dir()), None)
    if found is None:
        raise DataError(f"{root}: expected a {split}/ folder with {holds} (and the other split beside it)")
    return found


def _split_dirs(root: pathlib.Path, holds: str) -> tuple[pathlib.Path, pathlib.Path]:
    return _split_dir(root, "train", holds), _split_dir(root, "val", holds)


def _coco_split(root: pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    names = ("train",) if split == "train" else ("val", "valid", "test")
    for name in names:
        for json_path, images in (
            (root / f"{name}.json", root / name),
            (root / "annotations" / f"instances_{name}2017.json", root / f"{name}2017"),
        ):
            if json_path.is_file():
                return json_path, images
    raise DataError(
        f"{root}: no {split} annotations; expected {split}.json with images in {split}/ "
        f"(or annotations/instances_{split}2017.json with {split}2017/)"
    )


def _classes_file(root: pathlib.Path, required: bool) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        if required:
            raise DataError(f"{root}: classes.txt (one class name per line, background excluded) is missing")
        return None
    classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise DataError(f"{path}: no class names in it")
    return classes
