"""Pascal VOC xml: ``Annotations/<id>.xml`` (one per image) and ``JPEGImages/<filename>``.

VOC corners are 1-based pixel indices with both ends inclusive: an object covering pixel columns ``c0..c1``
(0-based) has ``xmin = c0 + 1`` and ``xmax = c1 + 1``. In cnnkit's continuous ``xyxy`` convention that box
is ``x1 = c0``, ``x2 = c1 + 1``, so the reader uses ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``
and the writer the inverse (the convention detectron2 uses). Every object is kept, ``difficult`` or not.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cnnkit.data.annotated import AnnotatedImages, ImageRecord, dataset_classes
from cnnkit.data.image_io import DEFAULT_MAX_PIXELS, ImageMode, refuse_existing, write_png
from cnnkit.data.targets import DEFAULT_BOX_TOLERANCE
from cnnkit.errors import DataError, did_you_mean


def _text(element: ET.Element, tag: str, where: str) -> str:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise DataError(f"{where}: missing <{tag}>")
    return found.text.strip()


def _number(element: ET.Element, tag: str, where: str) -> float:
    text = _text(element, tag, where)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> must be a number, got {text!r}") from None


def parse_voc_xml(xml_path: Path, images_dir: Path, classes: Sequence[str]) -> ImageRecord:
    """Parse one VOC annotation file.

    Args:
        xml_path: the ``.xml`` file.
        images_dir: folder holding the image named by ``<filename>``.
        classes: class names; an object whose ``<name>`` is not among them is a label out of range.

    Returns:
        The image's record: path, labels, ``xyxy`` pixel boxes, declared ``<size>``.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{xml_path}: not valid XML ({err})") from None
    label_of = {name: i for i, name in enumerate(classes)}
    size = root.find("size")
    declared = None
    if size is not None:
        declared = (
            int(_number(size, "width", f"{xml_path} <size>")),
            int(_number(size, "height", f"{xml_path} <size>")),
        )
    labels, boxes = [], []
    for k, obj in enumerate(root.findall("object")):
        where = f"{xml_path} (object {k})"
        name = _text(obj, "name", where)
        if name not in label_of:
            raise DataError(
                f"{where}: class {name!r} is not in classes {list(classes)}{did_you_mean(name, classes)}"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{where}: missing <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bndbox, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
        labels.append(label_of[name])
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
    return ImageRecord(
        path=images_dir / _text(root, "filename", str(xml_path)),
        source=str(xml_path),
        labels=torch.tensor(labels, dtype=torch.int64),
        boxes=torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4).to(torch.float32),
        size=declared,
    )


def read_voc(
    root: str | Path,
    classes: Sequence[str],
    *,
    image_set: str | None = None,
    mode: ImageMode = "RGB",
    skip_corrupt: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    box_tolerance: float = DEFAULT_BOX_TOLERANCE,
) -> AnnotatedImages:
    """Read a Pascal VOC folder (``Annotations/``, ``JPEGImages/``, optional ``ImageSets/Main/``).

    Args:
        root: the VOC folder (for example ``VOC2012``).
        classes: class names in label order (VOC's 20 names, or your own).
        image_set: name of a list in ``ImageSets/Main/<image_set>.txt`` (one id per line); default every
            ``Annotations/*.xml`` in sorted order.
        mode: image decoding mode, ``"RGB"``, ``"GRAY"`` or ``"UNCHANGED"``.
        skip_corrupt: drop corrupt images at construction, counting them in ``dataset.skipped``.
        max_pixels: images over this many pixels are refused before decoding.
        box_tolerance: pixels a box may stick out of its image before it is refused.

    Returns:
        A dataset of ``(image uint8 (C, H, W), {"labels": int64 (N,), "boxes": float32 (N, 4) xyxy px})``.
    """
    root = Path(root)
    annotations_dir, images_dir = root / "Annotations", root / "JPEGImages"
    if not annotations_dir.is_dir():
        raise DataError(f"{annotations_dir}: VOC Annotations folder not found")
    if image_set is None:
        xml_paths = sorted(annotations_dir.glob("*.xml"))
    else:
        list_path = root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_path.is_file():
            raise DataError(f"{list_path}: VOC image set list not found")
        xml_paths = [
            annotations_dir / f"{line.split()[0]}.xml"
            for line in list_path.read_text().splitlines()
            if line.strip()
        ]
    for xml_path in xml_paths:
        if not xml_path.is_file():
            raise DataError(f"{xml_path}: VOC annotation file not found")
    records = [parse_voc_xml(p, images_dir, classes) for p in xml_paths]
    return AnnotatedImages(
        records,
        list(classes),
        mode=mode,
        skip_corrupt=skip_corrupt,
        max_pixels=max_pixels,
        box_tolerance=box_tolerance,
    )


def _format_number(value: float) -> str:
    """Integers without a decimal point (as VOC files have them), other values exactly (``repr``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_voc(
    dataset: Sequence[tuple[torch.Tensor, dict[str, Any]]],
    root: str | Path,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a detection dataset as a VOC folder: ``JPEGImages/{i:06d}.png`` and ``Annotations/{i:06d}.xml``.

    Images are written as PNG (lossless) despite the folder's name; boxes exactly (see the module docs for
    the 1-based corner convention).

    Args:
        dataset: items ``(image uint8 (C, H, W), target)`` with ``labels`` and ``boxes`` (xyxy pixels).
        root: folder to write into.
        classes: class names used for ``<name>``; default ``dataset.classes``.
        overwrite: replace existing files; by default any existing file is refused before anything is written.

    Returns:
        ``root``.
    """
    root = Path(root)
    names = dataset_classes(dataset, classes)
    stems = [f"{i:06d}" for i in range(len(dataset))]
    refuse_existing(
        [
            *(root / "JPEGImages" / f"{s}.png" for s in stems),
            *(root / "Annotations" / f"{s}.xml" for s in stems),
        ],
        overwrite,
    )
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        image, target = dataset[i]
        write_png(image, root / "JPEGImages" / f"{stem}.png", overwrite)
        annotation = ET.Element("annotation")
        ET.SubElement(annotation, "filename").text = f"{stem}.png"
        size = ET.SubElement(annotation, "size")
        for tag, value in zip(("width", "height", "depth"), (image.shape[2], image.shape[1], image.shape[0])):
            ET.SubElement(size, tag).text = str(int(value))
        for label, (x1, y1, x2, y2) in zip(target["labels"].tolist(), target["boxes"].tolist()):
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = names[label]
            ET.SubElement(obj, "difficult").text = "0"
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)):
                ET.SubElement(bndbox, tag).text = _format_number(value)
        ET.indent(annotation)
        with open(root / "Annotations" / f"{stem}.xml", "wb" if overwrite else "xb") as f:
            ET.ElementTree(annotation).write(f, encoding="utf-8", xml_declaration=True)
    return root
