"""Object detection and instance segmentation as tasks: batch preparation, the training forward pass,
criterion, post-processing into boxes (and masks) in the original image's pixels, and COCO metrics.

The tasks drive any detector with the detection contract (:class:`~cnnkit.tasks.detection.yolo.YOLODetector`,
:class:`~cnnkit.tasks.detection.faster_rcnn.FasterRCNN`, :class:`~cnnkit.tasks.detection.mask_rcnn.MaskRCNN`):
``model(images, targets)`` in training (a two-stage model samples its second-stage boxes from the targets),
``model(images)`` in evaluation, ``model.criterion(outputs, targets)`` (the loss terms, which depend on the
detector's anchors and samples) and ``model.postprocess(outputs, ...)``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data.collate import collate_detection
from cnnkit.data.sources import BOX_DATA, INSTANCE_DATA, RunData, box_data
from cnnkit.errors import DataError
from cnnkit.tasks.base import ImageInfo, Prediction, PredictOptions, Task, register_task
from cnnkit.tasks.detection.metrics import evaluate_coco, predictions_to_coco, targets_to_coco

AugmentFn = Callable[..., tuple[torch.Tensor, Any]]
Target = dict[str, torch.Tensor]


@dataclass
class Detections(Prediction):
    """The objects found in one image, by decreasing score, in the original image's pixels.

    Attributes:
        boxes: ``(N, 4)`` float ``xyxy``.
        scores: ``(N,)``.
        labels: ``(N,)`` int64 class indices.
        masks: ``(N, H, W)`` float in ``[0, 1]`` (instance segmentation), else ``None``.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{"boxes", "scores", "labels"[, "masks"]}`` tensors (what drawing and COCO export take)."""
        out = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        if self.masks is not None:
            out["masks"] = self.masks
        return out

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """``{"detections": [{"label", "score", "box": [x1, y1, x2, y2]}, ...]}``."""
        return {
            "detections": [
                {"label": classes[c], "score": round(s, 4), "box": [round(v, 1) for v in b]}
                for c, s, b in zip(self.labels.tolist(), self.scores.tolist(), self.boxes.tolist())
            ]
        }


@register_task
class DetectionTask(Task):
    """Prepare batches, run the detector's loss, post-process boxes and accumulate COCO metrics.

    Args:
        model: the detector (its :meth:`criterion` and :meth:`postprocess` are used; under DDP pass the
            unwrapped module).
        classes: class names, label order (no background).
        mean / std: per-channel normalization applied after scaling ``uint8`` images to ``[0, 1]``.
        augment: a batched, target-aware transform ``augment(images, targets, generator=g)`` applied to
            training batches (boxes, and instance masks, move with their image).
        score_threshold / iou_threshold / max_detections: post-processing for evaluation (COCO evaluation
            keeps a low threshold: AP integrates over every score).

    Example:
        >>> from cnnkit.tasks.detection.yolo import YOLODetector
        >>> model = YOLODetector("resnet18", num_classes=2, in_chans=1, fpn_channels=32)
        >>> task = DetectionTask(model, ["a", "b"], mean=(0.5,), std=(0.5,))
        >>> images = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
        >>> targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
        >>> x, t = task.prepare((images, targets), train=False, device=torch.device("cpu"))
        >>> sorted(task.compute_loss(model, x, t))
        ['box', 'class', 'confidence', 'loss']
    """

    name = "detection"
    default_model = "yolo"
    default_metric = "map"
    default_augment = [{"RandomAffine": {"degrees": 0, "translate": [0.1, 0.1], "scale": [0.8, 1.2]}}]
    data_names = BOX_DATA
    masks = False
    """Whether the task also predicts and evaluates instance masks."""
    collate = staticmethod(collate_detection)

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
    ) -> None:
        super().__init__(model, classes, mean, std, augment)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections

    @classmethod
    def build_data(cls, config: Any) -> RunData:
        """Boxes (and instance masks when :attr:`masks`): generated sets or ``coco:``/``yolo:``/``voc:``."""
        return box_data(config, masks=cls.masks)

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
        """The detector's loss terms: ``{"loss": total, ...detached parts}``."""
        return self.model.criterion(outputs, targets)

    def decode(
        self, outputs: Any, image_size: tuple[int, int] | None = None, score_threshold: float | None = None
    ) -> list[Target]:
        """Detections per image ``{"boxes", "scores", "labels"[, "masks"]}`` in the model input's pixels,
        with the task's thresholds (``score_threshold`` overrides the evaluation one)."""
        return self.model.postprocess(
            outputs,
            score_threshold=self.score_threshold if score_threshold is None else score_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=self.max_detections,
            image_size=image_size,
        )

    def postprocess(
        self, outputs: Any, infos: Sequence[ImageInfo], options: PredictOptions | None = None
    ) -> list[Detections]:
        """Detections of each image above ``options.score_threshold``, mapped back to its original pixels:
        boxes divided by the letterbox scale, masks cropped to the image and resized to its size."""
        options = options or PredictOptions()
        input_size = infos[0].input_size if infos else None
        results = []
        for det, info in zip(self.decode(outputs, input_size, options.score_threshold), infos):
            masks = det.get("masks")
            if masks is not None:
                inner_h, inner_w = info.inner
                masks = masks[:, :inner_h, :inner_w].float()
                if (inner_h, inner_w) != tuple(info.size):
                    masks = F.interpolate(masks[:, None], size=info.size, mode="bilinear")[:, 0]
            results.append(Detections(det["boxes"] / info.scale, det["scores"], det["labels"], masks))
        return results

    def draw(self, image: torch.Tensor, prediction: Detections) -> torch.Tensor:
        """The image with its boxes, labels and scores drawn (and masks overlaid)."""
        from cnnkit.tasks import plots

        return plots.draw_detections(image, prediction.as_dict(), self.classes)

    def evaluator(self) -> DetectionEvaluator:
        """A fresh metric accumulator."""
        return DetectionEvaluator(self.decode, self.classes, masks=self.masks)

    def summary(self, metrics: dict[str, Any], best: float | None = None) -> str:
        """``mAP@[.5:.95] M (best B), mAP@.5 M50``."""
        best_text = f" (best {best:.4f})" if best is not None else ""
        return f"mAP@[.5:.95] {metrics['map']:.4f}{best_text}, mAP@.5 {metrics['map50']:.4f}"

    def plot_metrics(self, metrics: dict[str, Any], out_dir: pathlib.Path) -> list[pathlib.Path]:
        """``pr_curves.png`` (per class at IoU 0.5) and, with masks, ``mask_pr_curves.png``."""
        from cnnkit.tasks.detection.metrics import plot_pr_curves

        out_dir = pathlib.Path(out_dir)
        written = []
        if "pr_curves" in metrics:
            written.append(plot_pr_curves(metrics, out_dir / "pr_curves.png"))
        if "mask_pr_curves" in metrics:
            masks = {k[len("mask_") :]: v for k, v in metrics.items() if k.startswith("mask_")}
            written.append(plot_pr_curves(masks, out_dir / "mask_pr_curves.png"))
        return written


@register_task
class InstanceSegmentationTask(DetectionTask):
    """Detection with a mask per object (Mask R-CNN): boxes, labels, scores and instance masks, evaluated
    with COCO box and mask mAP; it also answers ``task=segmentation`` and ``task=detection`` configs."""

    name = "instance_segmentation"
    answers = ("segmentation", "detection")
    default_model = "mask_rcnn"
    default_metric = "mask_map"
    data_names = INSTANCE_DATA
    masks = True

    def summary(self, metrics: dict[str, Any], best: float | None = None) -> str:
        """``mask mAP M (best B), mask mAP@.5 M50, box mAP@.5 B50``."""
        best_text = f" (best {best:.4f})" if best is not None else ""
        return (
            f"mask mAP {metrics['mask_map']:.4f}{best_text}, mask mAP@.5 {metrics['mask_map50']:.4f}, "
            f"box mAP@.5 {metrics['map50']:.4f}"
        )


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
