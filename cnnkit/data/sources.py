"""The datasets a run names with ``data=``: what ``cnnkit train`` / ``eval`` read, one reader per kind of target.

Each task's :meth:`~cnnkit.tasks.base.Task.build_data` calls one of :func:`class_data` (labels),
:func:`box_data` (boxes, optionally instance masks) and :func:`mask_data` (semantic maps) with the run's
config (any object with the fields of :class:`cnnkit.engine.config.TrainConfig` that they read).

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
  names from ``ROOT/data.yaml`` or ``ROOT/<split>/data.yaml``; or a standard dataset YAML (``path``, ``train``,
  ``val``, ``names``: :mod:`cnnkit.data.yolo`) as ``yolo:FILE.yaml`` or as ``ROOT/data.yaml``;
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

from cnnkit.data.wrappers import InMemory, InstancesToSemantic, Letterboxed, Resized, image_mode
from cnnkit.errors import ConfigError, DataError

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
CLASS_DATA = "mnist5k, imagefolder:PATH"
BOX_DATA = "mnist-det, shapes, coco:PATH, yolo:PATH, voc:PATH"
MASK_DATA = "mnist-seg, shapes, masks:PATH, coco:PATH"
INSTANCE_DATA = "mnist-seg, mnist-det, shapes, coco:PATH"


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

    def subset(self, train_size: int | None, val_size: int | None, seed: int) -> RunData:
        """At most ``train_size`` / ``val_size`` items of each split, drawn from ``seed`` / ``seed + 1``."""
        self.train = _subset(self.train, train_size, seed)
        self.val = _subset(self.val, val_size, seed + 1)
        return self


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


def _unknown(config: Any, accepted: str) -> ConfigError:
    return ConfigError(f"data={config.data.name!r} is not a {config.task} dataset: use {accepted}")


def class_data(config: Any, input_size: Sequence[int]) -> RunData:
    """Images with one label each: ``mnist5k`` (bundled, padded to 32x32) or ``imagefolder:ROOT``.

    Args:
        config: the run's config (``data.name``, ``data.image_size``).
        input_size: the model's default ``(C, H, W)``: a folder's images are read with ``C`` channels and
            resized / centre-cropped to ``data.image_size`` or ``H``.

    Raises:
        ConfigError: another data name. DataError: a folder layout that does not fit.
    """
    from cnnkit.data import ImageFolder, MNIST5k

    name = config.data.name
    if name == "mnist5k":
        train, val = MNIST5k("train", pad_to_32=True), MNIST5k("test", pad_to_32=True)
        return RunData(train, val, list(MNIST5k.classes), 1, 32, MNIST_MEAN, MNIST_STD)
    if not name.startswith("imagefolder:"):
        raise _unknown(config, CLASS_DATA)
    root = _root(name)
    train_dir, val_dir = _split_dirs(root, "one folder per class")
    size = config.data.image_size or input_size[1]
    chans = input_size[0]
    mode = image_mode(chans)
    train_raw, val_raw = ImageFolder(train_dir, mode=mode), ImageFolder(val_dir, mode=mode)
    if train_raw.classes != val_raw.classes:
        raise DataError(
            f"{root}: train classes {train_raw.classes} differ from {val_dir.name} classes {val_raw.classes}"
        )
    return RunData(
        Resized(train_raw, size), Resized(val_raw, size), list(train_raw.classes), chans, size, None, None
    )


def _generated(config: Any, keep: Sequence[str]) -> RunData:
    from cnnkit.data import MNISTDetection, MNISTSegmentation, Shapes

    name = config.data.name
    size = config.data.image_size or 128
    kinds = {"mnist-det": MNISTDetection, "mnist-seg": MNISTSegmentation, "shapes": Shapes}
    kind = kinds[name]
    if kind is MNISTDetection and ("mask" in keep or "masks" in keep):
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


def box_data(config: Any, masks: bool = False) -> RunData:
    """Images with boxes and labels (and instance ``masks`` when ``masks``): the generated ``mnist-det``,
    ``mnist-seg``, ``shapes``, or a user's ``coco:``, ``yolo:``, ``voc:`` folder (letterboxed).

    Raises:
        ConfigError: another data name (or a format without instance masks when ``masks``).
        DataError: a folder layout that does not fit.
    """
    name = config.data.name
    keep = ("boxes", "labels", "masks") if masks else ("boxes", "labels")
    if name in ("mnist-det", "mnist-seg", "shapes"):
        return _generated(config, keep)
    kind, _, _ = name.partition(":")
    if kind not in (("coco",) if masks else ("coco", "yolo", "voc")):
        raise _unknown(config, INSTANCE_DATA if masks else BOX_DATA)
    return _user_annotated(config, kind, with_masks=masks)


def mask_data(config: Any) -> RunData:
    """Images with a semantic ``mask`` each: the generated ``mnist-seg``, ``shapes``, a ``masks:`` folder or
    a ``coco:`` folder (instances drawn into one map), letterboxed.

    Raises:
        ConfigError: another data name. DataError: a folder layout that does not fit.
    """
    name = config.data.name
    if name in ("mnist-seg", "shapes"):
        return _generated(config, ("mask",))
    kind, _, _ = name.partition(":")
    if kind == "coco":
        return _user_annotated(config, "coco", with_masks=True, semantic=True)
    if kind != "masks":
        raise _unknown(config, MASK_DATA)
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


def _user_annotated(config: Any, kind: str, with_masks: bool, semantic: bool = False) -> RunData:
    from cnnkit.data import read_coco, read_voc, read_yolo
    from cnnkit.data.yolo import read_dataset_yaml

    mode = image_mode(_channels(config))
    dataset_yaml = _yolo_dataset_yaml(config.data.name) if kind == "yolo" else None
    if dataset_yaml is not None:
        described, names = read_dataset_yaml(dataset_yaml)
    else:
        root = _root(config.data.name)
        if kind == "yolo":
            _split_dirs(root, "images/ and labels/")  # both splits exist, before reading either
    datasets = []
    for split in ("train", "val"):
        if dataset_yaml is not None:
            dataset = read_yolo(described[split], names, mode=mode)
        elif kind == "coco":
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
        wrapped = [InstancesToSemantic(d) for d in wrapped]
    return RunData(wrapped[0], wrapped[1], classes, _channels(config), size, None, None)


def _yolo_dataset_yaml(name: str) -> pathlib.Path | None:
    """The dataset YAML a ``yolo:`` name points to (the file itself, or a folder's ``data.yaml`` with
    ``train`` and ``val`` keys); ``None`` for today's layout of split folders."""
    from cnnkit.data.yolo import is_dataset_yaml

    path = pathlib.Path(name.partition(":")[2]).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise DataError(f"YOLO dataset YAML not found: {path}")
        return path
    return path / "data.yaml" if is_dataset_yaml(path / "data.yaml") else None


def _channels(config: Any) -> int:
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
