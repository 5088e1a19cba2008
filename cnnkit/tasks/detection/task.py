"""Object detection (and instance segmentation) as a task: batch preparation, the training forward pass,
criterion, post-processing and COCO metrics, each callable alone.

The task drives any detector with the detection contract (:class:`~cnnkit.tasks.detection.yolo.YOLODetector`,
:class:`~cnnkit.tasks.detection.faster_rcnn.FasterRCNN`, :class:`~cnnkit.tasks.detection.mask_rcnn.MaskRCNN`):
``model(images, targets)`` in training (a two-stage model samples its second-stage boxes from the targets),
``model(images)`` in evaluation, ``model.criterion(outputs, targets)`` and ``model.postprocess(outputs, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cnnkit.errors import DataError
from cnnkit.tasks.detection.metrics import evaluate_coco, predictions_to_coco, targets_to_coco
from cnnkit.tasks.images import channel_stats, normalize_images

AugmentFn = Callable[..., tuple[torch.Tensor, Any]]
Target = dict[str, torch.Tensor]


class DetectionTask:
    """Prepare batches, run the detector's loss and accumulate COCO metrics.

    Args:
        model: the detector (its :meth:`criterion` and :meth:`postprocess` are used; under DDP pass the
            unwrapped module).
        classes: class names, label order (no background).
        mean / std: per-channel normalization applied after scaling ``uint8`` images to ``[0, 1]``.
        augment: a batched, target-aware transform ``augment(images, targets, generator=g)`` applied to
            training batches (boxes, and instance masks, move with their image).
        score_threshold / iou_threshold / max_detections: post-processing for evaluation (COCO evaluation
            keeps a low threshold: AP integrates over every score).
        masks: also evaluate instance masks (``mask_map``, ``mask_map50``...; Mask R-CNN).

    Example:
        >>> from cnnkit.tasks.detection.yolo import YOLODetector
        >>> model = YOLODetector("resnet18", num_classes=2, in_chans=1, fpn_channels=32)
        >>> task = DetectionTask(model, ["a", "b"], mean=(0.5,), std=(0.5,))
        >>> images = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
        >>> targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
        >>> x, t = task.prepare((images, targets), train=False, device=torch.device("cpu"))
        >>> sorted(task.criterion(task.forward(model, x, t), t))
        ['box', 'class', 'confidence', 'loss']
    """

    name = "detection"

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentFn | None = None,
        score_threshold: float = 0.01,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        masks: bool = False,
    ) -> None:
        self.model = model
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.mean = channel_stats(mean)
        self.std = channel_stats(std)
        self.augment = augment
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self.masks = masks

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` or ``[0, 1]`` float images ``(B, C, H, W)`` -> normalized float32."""
        return normalize_images(images, self.mean, self.std)

    def prepare(
        self,
        batch: tuple[torch.Tensor, list[Target]],
        *,
        train: bool,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[Target]]:
        """Move a batch to ``device``, augment it (training only) and normalize the images.

        Shape:
            - Input: images ``(B, C, H, W)`` uint8/float; targets: ``B`` dicts with ``boxes (N, 4)`` xyxy
              pixels and ``labels (N,)`` (and ``masks (N, H, W)`` for instances)
            - Output: images ``(B, C, H', W')`` float32, targets moved with them, each with
              ``image_size`` ``(2,)`` = ``(H', W')`` (what evaluation clips boxes to)
        """
        images, targets = batch
        if not isinstance(images, torch.Tensor):
            raise DataError(
                "detection batches need images of one size; set data.image_size to letterbox them"
            )
        images = images.to(device, non_blocking=True)
        targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
        if train and self.augment is not None:
            images, targets = self.augment(images, targets, generator=generator)
        size = torch.tensor(images.shape[-2:])
        return self.normalize(images), [{**target, "image_size": size} for target in targets]

    def forward(self, model: nn.Module, images: torch.Tensor, targets: list[Target] | None = None) -> Any:
        """The training forward pass ``model(images, targets)``."""
        return model(images, targets)

    def criterion(self, outputs: Any, targets: list[Target]) -> dict[str, torch.Tensor]:
        """The detector's loss: ``{"loss": total, ...detached parts}``."""
        return self.model.criterion(outputs, targets)

    def postprocess(self, outputs: Any, image_size: tuple[int, int] | None = None) -> list[Target]:
        """Detections per image ``{"boxes", "scores", "labels"[, "masks"]}``, with the task's thresholds."""
        return self.model.postprocess(
            outputs,
            score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=self.max_detections,
            image_size=image_size,
        )

    def evaluator(self) -> DetectionEvaluator:
        """A fresh metric accumulator."""
        return DetectionEvaluator(self.postprocess, self.classes, masks=self.masks)


class DetectionEvaluator:
    """Collects detections and ground truth over batches; COCO mAP (pycocotools) when computed.

    Args:
        postprocess: ``postprocess(outputs, image_size) -> detections per image``.
        classes: class names, label order.
        masks: also compute mask mAP (``"segm"``), with keys prefixed ``mask_``.
    """

    def __init__(
        self, postprocess: Callable[..., list[Target]], classes: Sequence[str], masks: bool = False
    ) -> None:
        self.postprocess = postprocess
        self.classes = list(classes)
        self.masks = masks
        self.predictions: list[Target] = []
        self.targets: list[Target] = []
        self.sizes: list[tuple[int, int]] = []

    @torch.no_grad()
    def update(self, outputs: Any, targets: list[Target]) -> None:
        """Post-process a batch's raw outputs and keep them with the batch's targets (on the CPU)."""
        size = _image_size(targets)
        keep = ("boxes", "labels", "masks", "iscrowd") if self.masks else ("boxes", "labels", "iscrowd")
        for pred, target in zip(self.postprocess(outputs, image_size=size), targets):
            self.predictions.append({k: v.detach().float().cpu() for k, v in pred.items()})
            self.targets.append({k: v.detach().cpu() for k, v in target.items() if k in keep})
            self.sizes.append(size)

    def reduce(self, all_reduce: Callable[[torch.Tensor], None]) -> None:
        """Gather every rank's detections and targets (an all-gather built from ``all_reduce``)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.predictions, self.targets, self.sizes))
        self.predictions = [p for rank in gathered for p in rank[0]]
        self.targets = [t for rank in gathered for t in rank[1]]
        self.sizes = [s for rank in gathered for s in rank[2]]

    def compute(self) -> dict[str, Any]:
        """COCO metrics: ``map``, ``map50``, ``map75``, ``map_small/medium/large``, ``mar_*``, ``per_class``,
        ``pr_curves`` and ``images``; with masks also the same keys prefixed ``mask_``."""
        gt = targets_to_coco(self.targets, self.sizes, self.classes)
        result = evaluate_coco(gt, predictions_to_coco(_boxes_only(self.predictions)), "bbox")
        if self.masks:
            segm = evaluate_coco(gt, predictions_to_coco(self.predictions), "segm")
            result.update({f"mask_{key}": value for key, value in segm.items()})
        result["images"] = len(self.targets)
        return result


def _boxes_only(predictions: list[Target]) -> list[Target]:
    return [{k: v for k, v in p.items() if k != "masks"} for p in predictions]


def _image_size(targets: list[Target]) -> tuple[int, int]:
    """The batch's ``(height, width)``, as :meth:`DetectionTask.prepare` records it."""
    if not targets or "image_size" not in targets[0]:
        raise DataError("detection targets need 'image_size'; prepare batches with DetectionTask.prepare")
    return tuple(int(v) for v in targets[0]["image_size"])
