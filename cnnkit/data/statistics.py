"""Summary statistics of a detection dataset: objects per image, class balance, box sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DetectionStatistics:
    """What :func:`detection_statistics` measures.

    Attributes:
        images: number of images measured.
        objects: total number of boxes.
        objects_per_image: ``(mean, min, max)`` boxes per image.
        class_counts: boxes per class, indexed by label.
        box_side_quantiles: quantiles ``(0, 0.1, 0.5, 0.9, 1)`` of ``sqrt(w * h)`` in pixels.
        box_width_quantiles / box_height_quantiles: the same quantiles of widths and heights.
    """

    images: int
    objects: int
    objects_per_image: tuple[float, int, int]
    class_counts: list[int]
    box_side_quantiles: list[float]
    box_width_quantiles: list[float]
    box_height_quantiles: list[float]


QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


def detection_statistics(
    dataset: Sequence[tuple[Any, dict[str, torch.Tensor]]], num_classes: int, limit: int | None = None
) -> DetectionStatistics:
    """Measure objects per image, class balance and box sizes over a detection dataset.

    Args:
        dataset: items ``(image, target)`` with ``labels`` ``(N,)`` and ``boxes`` ``(N, 4)`` xyxy pixels.
        num_classes: length of ``class_counts``.
        limit: measure only the first ``limit`` items.

    Returns:
        The statistics; quantiles are ``nan`` when there is no box.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    per_image, labels, boxes = [], [], []
    for i in range(count):
        target = dataset[i][1]
        per_image.append(len(target["labels"]))
        labels.append(target["labels"].reshape(-1))
        boxes.append(target["boxes"].reshape(-1, 4).to(torch.float64))
    all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    all_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4, dtype=torch.float64)
    widths, heights = all_boxes[:, 2] - all_boxes[:, 0], all_boxes[:, 3] - all_boxes[:, 1]
    q = torch.tensor(QUANTILES, dtype=torch.float64)

    def quantiles(values: torch.Tensor) -> list[float]:
        return values.quantile(q).tolist() if len(values) else [float("nan")] * len(QUANTILES)

    counts = torch.tensor(per_image, dtype=torch.float64)
    return DetectionStatistics(
        images=count,
        objects=len(all_labels),
        objects_per_image=(
            float(counts.mean()) if count else 0.0,
            min(per_image, default=0),
            max(per_image, default=0),
        ),
        class_counts=torch.bincount(all_labels, minlength=num_classes).tolist(),
        box_side_quantiles=quantiles((widths * heights).sqrt()),
        box_width_quantiles=quantiles(widths),
        box_height_quantiles=quantiles(heights),
    )
