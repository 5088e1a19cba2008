"""COCO json: read boxes and instance masks (polygons or RLE, via ``pycocotools.mask``), and write them.

Category ids may be any integers; the reader maps them, sorted, to contiguous labels ``0..K-1``
(``dataset.category_ids[label]`` gives the id back). The writer uses ``category_id = label + 1``, the same
number a semantic ``mask`` uses for that class, and stores boxes as ``[x, y, w, h]`` floats in pixels, so
writing and reading gives back the same boxes exactly. Crowd annotations (``iscrowd: 1``) are not objects
to detect and are left out of targets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from cnnkit.data.annotated import AnnotatedImages, ImageRecord, dataset_classes
from cnnkit.data.image_io import DEFAULT_MAX_PIXELS, ImageMode, refuse_existing, write_png
from cnnkit.data.targets import DEFAULT_BOX_TOLERANCE, check_masks
from cnnkit.errors import DataError


class COCODataset(AnnotatedImages):
    """Images and annotations of a COCO json file; build it with :func:`read_coco`.

    Attributes:
        classes: category names in label order.
        category_ids: COCO category id of each label.
        image_ids: COCO image id of each item.
        with_masks: whether targets carry ``masks``.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        classes: list[str],
        category_ids: list[int],
        with_masks: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(records, classes, **kwargs)
        self.category_ids = category_ids
        self.with_masks = with_masks
        self.image_ids = [r.extra["image_id"] for r in self.records]

    def target_extras(self, record: ImageRecord, width: int, height: int) -> dict[str, torch.Tensor]:
        """Decode the record's segmentations to ``masks`` uint8 ``(N, H, W)`` when read with masks."""
        if not self.with_masks:
            return {}
        for seg in record.extra["segmentations"]:
            if isinstance(seg, dict) and list(seg["size"]) != [height, width]:
                raise DataError(
                    f"{record.source}: RLE size {seg['size']} is not the image's [{height}, {width}]"
                )
        masks = [_decode_segmentation(seg, height, width) for seg in record.extra["segmentations"]]
        stacked = (
            torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
        )
        return {"masks": check_masks(stacked, len(masks), width, height, record.source)}


def _decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygon list, uncompressed or compressed RLE) to a ``(H, W)`` 0/1 mask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(np.uint8)


def _check_segmentation(segmentation: Any, where: str) -> None:
    """Raise ``DataError`` unless ``segmentation`` is a polygon list or an RLE dict."""
    if isinstance(segmentation, list):
        if not segmentation or any(
            not isinstance(p, list)
            or len(p) < 6
            or len(p) % 2
            or not all(isinstance(v, int | float) for v in p)
            for p in segmentation
        ):
            raise DataError(f"{where}: polygon segmentation must be lists of at least 3 (x, y) number pairs")
    elif not (isinstance(segmentation, dict) and {"counts", "size"} <= segmentation.keys()):
        raise DataError(
            f"{where}: segmentation must be a polygon list or an RLE dict with 'counts' and 'size'"
        )
    elif isinstance(segmentation["counts"], list) and sum(segmentation["counts"]) != np.prod(
        segmentation["size"]
    ):
        raise DataError(
            f"{where}: RLE counts sum to {sum(segmentation['counts'])}, not height * width of size "
            f"{segmentation['size']}"
        )


def _load_json(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise DataError(f"{json_path}: COCO annotation file not found")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{json_path}: not valid JSON ({err})") from None
    missing = (
        [key for key in ("images", "annotations", "categories") if key not in data]
        if isinstance(data, dict)
        else ["images", "annotations", "categories"]
    )
    if missing:
        raise DataError(f"{json_path}: not a COCO file; missing keys {missing}")
    return data


def read_coco(
    json_path: str | Path,
    image_dir: str | Path,
    *,
    with_masks: bool = False,
    mode: ImageMode = "RGB",
    skip_corrupt: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    box_tolerance: float = DEFAULT_BOX_TOLERANCE,
) -> COCODataset:
    """Read a COCO detection / instance-segmentation json and its images.

    Args:
        json_path: the annotation file (``images``, ``annotations``, ``categories``).
        image_dir: folder the images' ``file_name`` entries are relative to.
        with_masks: decode each annotation's ``segmentation`` into ``target["masks"]``.
        mode: image decoding mode, ``"RGB"``, ``"GRAY"`` or ``"UNCHANGED"``.
        skip_corrupt: drop corrupt images at construction, counting them in ``dataset.skipped``.
        max_pixels: images over this many pixels are refused before decoding.
        box_tolerance: pixels a box may stick out of its image before it is refused.

    Returns:
        A dataset whose items are ``(image uint8 (C, H, W), {"labels", "boxes"[, "masks"]})``, with images in
        the order of the json's ``images`` list.

    Raises:
        DataError: missing or malformed file, unknown image or category id (label out of range), missing
            image file, bad bbox or segmentation.
    """
    json_path, image_dir = Path(json_path), Path(image_dir)
    data = _load_json(json_path)
    for key, required in (("images", ("id", "file_name")), ("categories", ("id", "name"))):
        for entry in data[key]:
            if not isinstance(entry, dict) or any(field not in entry for field in required):
                raise DataError(f"{json_path}: every entry of '{key}' needs {list(required)}, got {entry!r}")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in categories]
    label_of = {cid: label for label, cid in enumerate(category_ids)}
    per_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in data["images"]}
    for ann in data["annotations"]:
        where = f"{json_path} (annotation id {ann.get('id')})"
        if ann.get("image_id") not in per_image:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in the file's images")
        if ann.get("category_id") not in label_of:
            raise DataError(
                f"{where}: category_id {ann.get('category_id')!r} is out of range: not among the categories {category_ids}"
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            raise DataError(f"{where}: bbox must be [x, y, width, height] numbers, got {bbox!r}")
        if with_masks and not ann.get("iscrowd", 0):
            _check_segmentation(ann.get("segmentation"), where)
        per_image[ann["image_id"]].append(ann)
    records = []
    for im in data["images"]:
        anns = [a for a in per_image[int(im["id"])] if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1).to(torch.float32)
        records.append(
            ImageRecord(
                path=image_dir / im["file_name"],
                source=f"{json_path} (image id {im['id']})",
                labels=torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64),
                boxes=boxes,
                size=(int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None,
                extra={"image_id": int(im["id"]), "segmentations": [a.get("segmentation") for a in anns]},
            )
        )
    return COCODataset(
        records,
        [str(c["name"]) for c in categories],
        category_ids,
        with_masks,
        mode=mode,
        skip_corrupt=skip_corrupt,
        max_pixels=max_pixels,
        box_tolerance=box_tolerance,
    )


def _encode_mask(mask: torch.Tensor) -> dict[str, Any]:
    """Compressed RLE of a ``(H, W)`` 0/1 mask, with ``counts`` as text so it fits in json."""
    rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_coco(
    dataset: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    json_path: str | Path,
    image_dir: str | Path,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a detection dataset as COCO: PNG images (lossless) plus one json.

    Image ``i`` becomes ``image_dir/{i:06d}.png`` with image id ``i + 1``; label ``c`` becomes category id
    ``c + 1``; boxes are written as ``[x1, y1, x2 - x1, y2 - y1]``; ``masks`` in a target become
    compressed-RLE segmentations (and ``area`` the mask's pixel count, else the box area).

    Args:
        dataset: items ``(image uint8 (C, H, W), target)`` with ``labels`` and ``boxes`` (xyxy pixels).
        json_path: annotation file to write.
        image_dir: folder for the images.
        classes: class names; default ``dataset.classes``.
        overwrite: replace existing files; by default any existing file is refused before anything is written.

    Returns:
        ``json_path``.
    """
    json_path, image_dir = Path(json_path), Path(image_dir)
    classes = dataset_classes(dataset, classes)
    names = [f"{i:06d}.png" for i in range(len(dataset))]
    refuse_existing([json_path, *(image_dir / n for n in names)], overwrite)
    images, annotations = [], []
    for i, name in enumerate(names):
        image, target = dataset[i]
        write_png(image, image_dir / name, overwrite)
        images.append(
            {"id": i + 1, "file_name": name, "width": int(image.shape[-1]), "height": int(image.shape[-2])}
        )
        masks = target.get("masks")
        for j, (label, box) in enumerate(zip(target["labels"].tolist(), target["boxes"].tolist())):
            x1, y1, x2, y2 = box
            ann = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": int(label) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float((x2 - x1) * (y2 - y1)) if masks is None else float(masks[j].count_nonzero()),
                "iscrowd": 0,
            }
            if masks is not None:
                ann["segmentation"] = _encode_mask(masks[j])
            annotations.append(ann)
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(classes)]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "w" if overwrite else "x") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path
