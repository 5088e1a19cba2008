"""COCO detection metrics computed by pycocotools' ``COCOeval``, and converters into its formats.

COCO-standard numbers (Lin et al., "Microsoft COCO", 2014; ``cocodataset.org/#detection-eval``): AP is the
area under the interpolated precision-recall curve sampled at 101 recall points ``0, 0.01, ..., 1``
(precision at recall ``r`` = the highest precision at any recall ``>= r``), averaged over classes; ``map``
further averages over IoU thresholds ``0.50:0.05:0.95``. Small / medium / large objects have areas below
``32^2``, between ``32^2`` and ``96^2``, and above ``96^2`` pixels. Ground truths marked ``iscrowd`` count
neither as objects to find nor as false positives when a detection lands on them. A number is ``-1`` where
there is no ground truth of that kind (COCOeval's convention).

Conventions of the converters (the same as :func:`cnnkit.data.write_coco`): image ``i`` has id ``i + 1``,
label ``c`` has category id ``c + 1``, ``bbox`` is ``[x, y, w, h]`` in pixels.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnnkit.data.annotated import dataset_classes
from cnnkit.errors import DataError
from cnnkit.tasks.detection.boxes import box_convert

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SUMMARY_KEYS = (
    "map",
    "map50",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)
"""Names of ``COCOeval.stats[0..11]``, in order (``mar_k``: recall with at most ``k`` detections per image)."""


def targets_to_coco(
    targets: Sequence[dict[str, torch.Tensor]],
    image_sizes: Sequence[tuple[int, int]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """Ground truth as a COCO dict from cnnkit targets.

    Args:
        targets: per image ``{"labels": (N,), "boxes": (N, 4) xyxy}``, optionally ``"iscrowd": (N,)`` and
            instance ``"masks": (N, H, W)`` (then stored as RLE ``segmentation``, for ``iou_type="segm"``).
        image_sizes: ``(height, width)`` of each image.
        classes: class names, label order.

    Returns:
        ``{"images", "annotations", "categories"}``; each annotation's ``area`` is its box area, or its mask
        area when it has a mask.
    """
    if len(targets) != len(image_sizes):
        raise DataError(f"got {len(targets)} targets but {len(image_sizes)} image sizes")
    images, annotations = [], []
    for i, (target, (height, width)) in enumerate(zip(targets, image_sizes)):
        images.append({"id": i + 1, "width": int(width), "height": int(height), "file_name": f"{i:06d}.png"})
        xywh = box_convert(target["boxes"].detach().cpu().reshape(-1, 4), "xyxy", "xywh").tolist()
        crowd = target.get("iscrowd", torch.zeros(len(xywh), dtype=torch.int64)).tolist()
        rles = encode_masks(target["masks"]) if "masks" in target else [None] * len(xywh)
        for label, bbox, iscrowd, rle in zip(target["labels"].tolist(), xywh, crowd, rles):
            if not 0 <= label < len(classes):
                raise DataError(f"image {i}: label {label} is out of range [0, {len(classes)})")
            annotation = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": int(label) + 1,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": int(iscrowd),
            }
            if rle is not None:
                annotation["segmentation"] = rle
                annotation["area"] = float(mask_utils.area(rle))
            annotations.append(annotation)
    categories = [{"id": c + 1, "name": str(name)} for c, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def dataset_to_coco(
    dataset: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]], classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Ground truth as a COCO dict from a detection dataset of ``(image (C, H, W), target)`` items.

    Args:
        dataset: e.g. :class:`cnnkit.data.MNISTDetection` or a dataset read by :func:`cnnkit.data.read_coco`.
        classes: class names; default ``dataset.classes``.
    """
    classes = dataset_classes(dataset, classes)
    items = [dataset[i] for i in range(len(dataset))]
    return targets_to_coco([t for _, t in items], [tuple(im.shape[-2:]) for im, _ in items], classes)


def predictions_to_coco(
    predictions: Iterable[dict[str, torch.Tensor]],
    image_ids: Sequence[int] | None = None,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO result dicts from per-image predictions.

    Args:
        predictions: per image ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}``, optionally
            ``"masks": (K, H, W)`` probabilities or 0/1 (binarised at ``mask_threshold``, stored as RLE).
        image_ids: COCO id of each image; default ``1, 2, ...``.
        mask_threshold: probability from which a mask pixel belongs to the instance.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"[, "segmentation"]}, ...]``.
    """
    results = []
    for i, pred in enumerate(predictions):
        image_id = int(image_ids[i]) if image_ids is not None else i + 1
        xywh = box_convert(pred["boxes"].detach().cpu().reshape(-1, 4), "xyxy", "xywh").tolist()
        rles = (
            encode_masks(pred["masks"].detach() >= mask_threshold) if "masks" in pred else [None] * len(xywh)
        )
        for bbox, score, label, rle in zip(xywh, pred["scores"].tolist(), pred["labels"].tolist(), rles):
            result = {
                "image_id": image_id,
                "category_id": int(label) + 1,
                "bbox": bbox,
                "score": float(score),
            }
            if rle is not None:
                result["segmentation"] = rle
            results.append(result)
    return results


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO run-length encodings (``pycocotools.mask.encode``) of binary instance masks.

    Shape:
        ``(N, H, W)`` (any dtype, non-zero = inside) -> ``N`` RLE dicts (``counts`` as ``str``, JSON-ready).
    """
    stack = masks.detach().cpu().reshape(-1, *masks.shape[-2:]) != 0
    if len(stack) == 0:
        return []
    # pycocotools takes a Fortran-ordered (H, W, N) uint8 array.
    rles = mask_utils.encode(np.asfortranarray(stack.permute(1, 2, 0).numpy().astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


def _with_defaults(gt: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``gt`` whose annotations all have ``id``, ``area`` (box area) and ``iscrowd`` (0)."""
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise DataError(f"ground truth is not a COCO dict: missing key {key!r}")
    gt = copy.deepcopy(gt)
    for i, ann in enumerate(gt["annotations"]):
        ann.setdefault("id", i + 1)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    return gt


def evaluate_coco(
    gt: dict[str, Any], detections: Sequence[dict[str, Any]], iou_type: str = "bbox"
) -> dict[str, Any]:
    """COCO box (or mask) mAP of ``detections`` against ``gt``, computed by pycocotools (prints silenced).

    Args:
        gt: COCO dict with ``images``, ``annotations`` (``bbox`` xywh; ``area`` and ``iscrowd`` default to
            the box area and 0; ``segmentation`` for ``"segm"``) and ``categories``.
        detections: COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (plus
            ``segmentation`` RLE for ``"segm"``); may be empty (every AP is then 0). At most 100 per image
            count (the highest scores), as in COCO.
        iou_type: ``"bbox"`` (box IoU) or ``"segm"`` (mask IoU, instance segmentation).

    Returns:
        The :data:`SUMMARY_KEYS` as floats (``map`` = AP@[.5:.95], ``map50``, ``map75``, ``map_small`` ...);
        ``per_class``: one dict per category ``{"category_id", "name", "ap", "ap50", "ap75"}``;
        ``pr_curves``: ``{"recall": 101 recall points, "precision": per category, the interpolated precision
        at IoU 0.5 at those points (all areas, 100 detections)}``, -1 for a category without ground truth.
    """
    if iou_type not in ("bbox", "segm"):
        raise DataError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    gt = _with_defaults(gt)
    image_ids = {im["id"] for im in gt["images"]}
    unknown = sorted({d["image_id"] for d in detections} - image_ids)
    if unknown:
        raise DataError(
            f"detections refer to image ids {unknown[:5]} that are not in the ground truth's images"
        )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    result: dict[str, Any] = {key: float(v) for key, v in zip(SUMMARY_KEYS, evaluator.stats)}
    # precision[t, r, k, a, m]: IoU threshold t, recall point r, category k, area range a (0 = all), maxDets m
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
    result["per_class"] = [
        {
            "category_id": int(cat),
            "name": names[cat],
            "ap": _mean_valid(precision[:, :, k]),
            "ap50": _mean_valid(precision[0, :, k]),
            "ap75": _mean_valid(precision[5, :, k]),
        }
        for k, cat in enumerate(evaluator.params.catIds)
    ]
    result["pr_curves"] = {
        "recall": evaluator.params.recThrs.tolist(),
        "precision": [precision[0, :, k].tolist() for k in range(len(evaluator.params.catIds))],
    }
    return result


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries that are not -1 (COCOeval's "no ground truth"), or -1 when none is."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def plot_pr_curves(result: dict[str, Any], path: str | pathlib.Path, max_classes: int = 20) -> pathlib.Path:
    """Write the precision-recall curves at IoU 0.5 of :func:`evaluate_coco`'s result to a PNG.

    Args:
        result: the dict :func:`evaluate_coco` returns.
        path: PNG to write.
        max_classes: curves drawn at most (classes with the highest AP@.5 first).

    Returns:
        ``path``.
    """
    path = pathlib.Path(path)
    recall = result["pr_curves"]["recall"]
    curves = [
        (cls, prec)
        for cls, prec in zip(result["per_class"], result["pr_curves"]["precision"])
        if cls["ap50"] > -1
    ]
    curves.sort(key=lambda item: -item[0]["ap50"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for cls, prec in curves[:max_classes]:
        ax.plot(recall, prec, label=f"{cls['name']} (AP50 {cls['ap50']:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"precision-recall at IoU 0.5 (mAP50 {result['map50']:.3f})")
    if curves:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
