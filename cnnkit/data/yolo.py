"""YOLO txt: ``images/`` and ``labels/`` folders, one ``class cx cy w h`` line per object, normalised to [0, 1].

Layout of one YOLO folder (a split)::

    root/data.yaml          names: [class0, class1, ...]   (list, or a {index: name} mapping)
    root/images/<stem>.png
    root/labels/<stem>.txt  "<class> <cx> <cy> <w> <h>" per line; a missing file means no objects

A whole dataset is described by the de facto standard dataset YAML that YOLO training tools read::

    path: /abs/root         the dataset root (relative: to the YAML's folder)
    train: train/images     each split's image folder, relative to ``path``; its labels are in the folder
    val: val/images         named by replacing the last ``images`` component with ``labels``
    test: test/images       (optional)
    nc: 10
    names: {0: class0, 1: class1, ...}   (or a list)

Every label line is checked when the dataset is built: 5 columns, an integer class in ``[0, K)``, four
finite coordinates in ``[0, 1]`` within ``1e-6``; a bad line raises ``DataError`` naming ``file:line``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from cnnkit.data.annotated import AnnotatedImages, ImageRecord, dataset_classes
from cnnkit.data.image_io import DEFAULT_MAX_PIXELS, ImageMode, refuse_existing, write_png
from cnnkit.data.targets import DEFAULT_BOX_TOLERANCE, cxcywh_to_xyxy, xyxy_to_cxcywh
from cnnkit.errors import DataError

COORD_TOLERANCE = 1e-6
"""How far outside [0, 1] a normalised coordinate may be (rounding in the writing tool)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class YOLODataset(AnnotatedImages):
    """Images and labels of a YOLO folder; build it with :func:`read_yolo`. Boxes are stored normalised."""

    def pixel_boxes(self, record: ImageRecord, width: int, height: int) -> torch.Tensor:
        """Scale the record's normalised ``cx cy w h`` to ``xyxy`` pixels of a ``width x height`` image."""
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        return cxcywh_to_xyxy(record.boxes * scale).to(torch.float32)


def read_yolo_names(yaml_path: str | Path) -> list[str]:
    """Read class names from a YOLO ``data.yaml`` (``names`` as a list, or a mapping index -> name).

    Returns:
        The class names in label order.
    """
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise DataError(
            f"{yaml_path}: YOLO data.yaml not found; pass classes= or create it with 'names: [...]'"
        )
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{yaml_path}: not valid YAML ({err})") from None
    return names_from(data, yaml_path)


DATASET_SPLITS = ("train", "val", "test")
"""The splits a dataset YAML names (``train`` and ``val`` required, ``test`` optional)."""


@dataclass(frozen=True)
class YOLOSplit:
    """Where one split of a YOLO dataset lies: its image folder and its label folder."""

    images: Path
    labels: Path


def labels_dir_for(images_dir: str | Path) -> Path:
    """The label folder of an image folder: its last ``images`` component replaced by ``labels``
    (``root/train/images`` -> ``root/train/labels``, ``root/images/train`` -> ``root/labels/train``).

    Raises:
        DataError: a path without an ``images`` component.
    """
    parts = list(Path(images_dir).parts)
    if "images" not in parts:
        raise DataError(f"{images_dir}: a YOLO image folder's path needs an 'images' component")
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return Path(*parts)


def is_dataset_yaml(path: str | Path) -> bool:
    """Whether ``path`` is a dataset YAML (a mapping with ``train`` and ``val`` keys)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "train" in data and "val" in data


def read_dataset_yaml(yaml_path: str | Path) -> tuple[dict[str, YOLOSplit], list[str]]:
    """Read a YOLO dataset YAML (module docs): each split's folders and the class names.

    ``path`` relative (or missing) is taken from the YAML's own folder; an absolute ``path`` that no longer
    exists (the dataset was moved with its YAML) falls back to the YAML's folder too.

    Returns:
        ``({split: YOLOSplit}, names)`` for the splits the file names, in :data:`DATASET_SPLITS` order.

    Raises:
        DataError: unreadable YAML, no ``train`` / ``val``, a split that is not one folder name (file lists
            and lists of folders are not read), or a split folder that does not exist.
    """
    yaml_path = Path(yaml_path)
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{yaml_path}: not valid YAML ({err})") from None
    if not isinstance(data, dict) or "train" not in data or "val" not in data:
        raise DataError(f"{yaml_path}: a YOLO dataset YAML needs 'train' and 'val' (and 'path', 'names')")
    here = yaml_path.resolve().parent
    root = Path(str(data.get("path") or "."))
    root = root if root.is_absolute() else here / root
    if not root.is_dir():
        root = here
    splits = {}
    for split in DATASET_SPLITS:
        entry = data.get(split)
        if entry is None:
            continue
        if not isinstance(entry, str):
            raise DataError(f"{yaml_path}: {split}: expected one image folder, got {entry!r}")
        images = root / entry
        if not images.is_dir():
            raise DataError(f"{yaml_path}: {split}: image folder {images} not found")
        splits[split] = YOLOSplit(images, labels_dir_for(images))
    return splits, names_from(data, yaml_path)


def names_from(data: Any, where: str | Path) -> list[str]:
    """Class names from a parsed YOLO YAML: ``names`` as a list or a mapping ``0..K-1 -> name``.

    Raises:
        DataError: no such ``names``.
    """
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        return [str(names[i]) for i in range(len(names))]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DataError(f"{where}: 'names' must be a list of class names or a mapping 0..K-1 -> name")


def parse_label_file(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse and check one YOLO label file.

    Args:
        path: the ``.txt`` file.
        num_classes: ``K``; classes must be in ``[0, K)``.

    Returns:
        ``(labels int64 (N,), boxes float64 (N, 4))`` with boxes as normalised ``cx cy w h``.

    Raises:
        DataError: naming ``file:line`` for a line without 5 columns, a non-integer class, a class out of
            range, a coordinate that is not a finite number or lies outside ``[0, 1]`` beyond 1e-6.
    """
    labels, boxes = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 5:
            raise DataError(
                f"{where}: expected 5 columns 'class cx cy w h', got {len(fields)}: {line.strip()!r}"
            )
        try:
            label = int(fields[0])
        except ValueError:
            raise DataError(f"{where}: class {fields[0]!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{where}: class {label} is out of range [0, {num_classes})")
        try:
            coords = [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{where}: coordinates must be numbers, got {fields[1:]}") from None
        for name, value in zip(("cx", "cy", "w", "h"), coords):
            if not math.isfinite(value) or not -COORD_TOLERANCE <= value <= 1 + COORD_TOLERANCE:
                raise DataError(
                    f"{where}: {name} = {value} is outside [0, 1]; YOLO coordinates are normalised"
                )
        labels.append(label)
        boxes.append(coords)
    return torch.tensor(labels, dtype=torch.int64), torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def read_yolo(
    root: str | Path | YOLOSplit,
    classes: Sequence[str] | None = None,
    *,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    mode: ImageMode = "RGB",
    skip_corrupt: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    box_tolerance: float = DEFAULT_BOX_TOLERANCE,
) -> YOLODataset:
    """Read a YOLO folder (``images/``, ``labels/``, optional ``data.yaml``).

    Args:
        root: the folder holding ``images/`` and ``labels/``, or a :class:`YOLOSplit` of a dataset YAML
            (then ``classes`` are required).
        classes: class names; default the ``names`` of ``root/data.yaml``.
        extensions: image file endings to include (case-insensitive).
        mode: image decoding mode, ``"RGB"``, ``"GRAY"`` or ``"UNCHANGED"``.
        skip_corrupt: drop corrupt images at construction, counting them in ``dataset.skipped``.
        max_pixels: images over this many pixels are refused before decoding.
        box_tolerance: pixels a box (after scaling to the image) may stick out before it is refused.

    Returns:
        A dataset of ``(image uint8 (C, H, W), {"labels": int64 (N,), "boxes": float32 (N, 4) xyxy px})`` in
        sorted image-name order.
    """
    if isinstance(root, YOLOSplit):
        images_dir, labels_dir = root.images, root.labels
        names = list(classes or [])
    else:
        root = Path(root)
        images_dir, labels_dir = root / "images", root / "labels"
        names = list(classes) if classes is not None else None
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: YOLO images folder not found")
    if names is None:
        names = read_yolo_names(root / "data.yaml")
    suffixes = {e.lower() for e in extensions}
    paths = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    records = []
    for path in paths:
        label_path = labels_dir / f"{path.stem}.txt"
        if label_path.is_file():
            labels, boxes = parse_label_file(label_path, len(names))
        else:
            labels, boxes = torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, dtype=torch.float64)
        records.append(ImageRecord(path=path, source=str(label_path), labels=labels, boxes=boxes))
    return YOLODataset(
        records,
        names,
        mode=mode,
        skip_corrupt=skip_corrupt,
        max_pixels=max_pixels,
        box_tolerance=box_tolerance,
    )


def write_yolo(
    dataset: Sequence[tuple[torch.Tensor, dict[str, Any]]] | Mapping[str, Sequence],
    root: str | Path,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a detection dataset as YOLO folders.

    One split (a dataset): ``root/images/{i:06d}.png``, ``root/labels/{i:06d}.txt`` and ``root/data.yaml``
    with ``nc`` and ``names``. A whole dataset (a mapping ``{"train": ..., "val": ...[, "test": ...]}``):
    each split so in ``root/<split>/``, and one ``root/data.yaml`` in the standard form YOLO training tools
    read (module docs): the absolute ``path``, each split's image folder, ``nc`` and ``names`` as a mapping
    index -> name. ``data=yolo:ROOT`` reads either.

    Coordinates are written with 6 decimals, so boxes read back within ``1e-6 * max(W, H)`` pixels.

    Args:
        dataset: items ``(image uint8 (C, H, W), target)`` with ``labels`` and ``boxes`` (xyxy pixels), or
            a mapping of split names (``train`` and ``val``, optionally ``test``) to such datasets.
        root: folder to write into.
        classes: class names for ``data.yaml``; default ``dataset.classes`` (the ``train`` split's).
        overwrite: replace existing files; by default any existing file is refused before anything is written.

    Returns:
        ``root``.

    Raises:
        DataError: a mapping without ``train`` and ``val`` or with another split name; an existing file.
    """
    root = Path(root)
    if not isinstance(dataset, Mapping):
        names = dataset_classes(dataset, classes)
        _write_split(dataset, root, overwrite, extra=[root / "data.yaml"])
        with open(root / "data.yaml", "w" if overwrite else "x") as f:
            yaml.safe_dump({"nc": len(names), "names": names}, f, sort_keys=False)
        return root
    unknown = sorted(set(dataset) - set(DATASET_SPLITS))
    if unknown or "train" not in dataset or "val" not in dataset:
        raise DataError(
            f"write_yolo: splits must be train and val (and optionally test), got {sorted(dataset)}"
        )
    names = dataset_classes(dataset["train"], classes)
    splits = [s for s in DATASET_SPLITS if s in dataset]
    refuse_existing([root / "data.yaml"], overwrite)
    for split in splits:
        _refuse_split(dataset[split], root / split, overwrite)
    for split in splits:
        _write_split(dataset[split], root / split, overwrite=True)
    description = {"path": str(root.resolve())}
    description.update({split: f"{split}/images" for split in splits})
    description.update({"nc": len(names), "names": dict(enumerate(names))})
    with open(root / "data.yaml", "w" if overwrite else "x") as f:
        yaml.safe_dump(description, f, sort_keys=False)
    return root


def _split_files(dataset: Sequence, root: Path) -> list[Path]:
    stems = [f"{i:06d}" for i in range(len(dataset))]
    return [*(root / "images" / f"{s}.png" for s in stems), *(root / "labels" / f"{s}.txt" for s in stems)]


def _refuse_split(dataset: Sequence, root: Path, overwrite: bool, extra: Sequence[Path] = ()) -> None:
    refuse_existing([*extra, *_split_files(dataset, root)], overwrite)


def _write_split(dataset: Sequence, root: Path, overwrite: bool, extra: Sequence[Path] = ()) -> None:
    """``root/images`` and ``root/labels`` of one split (existing files refused first unless ``overwrite``)."""
    _refuse_split(dataset, root, overwrite, extra)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(len(dataset)):
        stem = f"{i:06d}"
        image, target = dataset[i]
        write_png(image, root / "images" / f"{stem}.png", overwrite)
        height, width = image.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        boxes = xyxy_to_cxcywh(target["boxes"].to(torch.float64)) / scale
        lines = [
            f"{label} " + " ".join(f"{v:.6f}" for v in box)
            for label, box in zip(target["labels"].tolist(), boxes.tolist())
        ]
        with open(root / "labels" / f"{stem}.txt", "w" if overwrite else "x") as f:
            f.write("".join(line + "\n" for line in lines))
