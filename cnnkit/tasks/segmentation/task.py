"""Semantic segmentation as a task: batch preparation, criterion, post-processing into class maps in the
original image's pixels, and metrics, each callable alone."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from cnnkit.data.collate import collate_detection
from cnnkit.data.sources import MASK_DATA, RunData, mask_data
from cnnkit.errors import ConfigError, DataError
from cnnkit.tasks.base import ImageInfo, Prediction, PredictOptions, Task, register_task, sample_items
from cnnkit.tasks.segmentation.losses import cross_entropy, dice_loss, focal_loss
from cnnkit.tasks.segmentation.metrics import SegmentationEvaluator

AugmentFn = Callable[..., tuple[torch.Tensor, Any]]
LOSSES = ("ce", "ce+dice", "focal")


@dataclass
class ClassMap(Prediction):
    """The class of every pixel of one image, in its original size.

    Attributes:
        mask: ``(H, W)`` int64, ``0`` background and ``c + 1`` for class ``c``.
    """

    mask: torch.Tensor

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """``{"classes": {name: fraction of the pixels}}`` for the classes present (background left out)."""
        counts = torch.bincount(self.mask.flatten(), minlength=len(classes) + 1)
        return {
            "classes": {
                name: round(counts[k + 1].item() / self.mask.numel(), 4)
                for k, name in enumerate(classes)
                if counts[k + 1]
            }
        }


@register_task
class SegmentationTask(Task):
    """Prepare batches, compute the loss and accumulate metrics for semantic segmentation.

    Args:
        model: the segmenter (not used by the task's own methods; kept for the common contract).
        classes: object class names; the model predicts ``K = len(classes) + 1`` classes, background first
            (11 for MNIST-Seg: background and ten digits).
        mean / std: per-channel normalization applied after scaling ``uint8`` images to ``[0, 1]``.
        augment: a batched, target-aware transform ``augment(images, targets, generator=g)`` applied to
            training batches; it moves each target's ``mask`` with its image.
        ignore_index: mask value of pixels left out of the loss and the metrics.
        loss: ``"ce"`` (cross-entropy), ``"ce+dice"`` (their sum) or ``"focal"`` (focal loss,
            ``gamma = focal_gamma``); see :mod:`cnnkit.tasks.segmentation.losses`.
        focal_gamma: focusing parameter of the focal loss.
        aux_weight: weight of the auxiliary logits' loss when a model with ``aux_loss=True`` returns
            ``(logits, aux_logits)`` in training (0.5, as torchvision's segmentation reference).

    Example:
        >>> task = SegmentationTask(None, ["a", "b"], mean=(0.5,), std=(0.5,))
        >>> images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
        >>> targets = [{"mask": torch.zeros(4, 4, dtype=torch.int64)} for _ in range(2)]
        >>> x, masks = task.prepare((images, targets), train=False, device=torch.device("cpu"))
        >>> tuple(x.shape), tuple(masks.shape), x[0, 0, 0, 0].item()
        ((2, 1, 4, 4), (2, 4, 4), -1.0)
    """

    name = "segmentation"
    default_model = "unet"
    default_metric = "miou"
    default_augment = [{"RandomAffine": {"degrees": 0, "translate": [0.1, 0.1], "scale": [0.8, 1.2]}}]
    data_names = MASK_DATA
    plot_samples = 6
    collate = staticmethod(collate_detection)

    def __init__(
        self,
        model: nn.Module | None,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentFn | None = None,
        ignore_index: int = 255,
        loss: str = "ce",
        focal_gamma: float = 2.0,
        aux_weight: float = 0.5,
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"unknown segmentation loss {loss!r}; choose one of {', '.join(LOSSES)}")
        super().__init__(model, classes, mean, std, augment)
        self.num_classes = len(self.classes) + 1
        self.ignore_index = ignore_index
        self.loss = loss
        self.focal_gamma = focal_gamma
        self.aux_weight = float(aux_weight)

    @classmethod
    def model_num_classes(cls, classes: Sequence[str]) -> int:
        """The classes and the background."""
        return len(classes) + 1

    @classmethod
    def build_data(cls, config: Any) -> RunData:
        """Semantic maps: ``mnist-seg``, ``shapes``, ``masks:ROOT`` or ``coco:ROOT``."""
        return mask_data(config)

    def prepare(
        self,
        batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]],
        *,
        train: bool,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a batch to ``device``, augment it (training only), normalize the images and stack the masks.

        Shape:
            - Input: images ``(B, C, H, W)`` uint8/float, targets: ``B`` dicts with ``mask`` int64 ``(H, W)``
            - Output: images ``(B, C, H', W')`` float32, masks ``(B, H', W')`` int64
        """
        images, targets = batch
        if not isinstance(images, torch.Tensor):
            raise DataError(
                "segmentation batches need images of one size; resize or crop them in the dataset"
            )
        images = images.to(device, non_blocking=True)
        targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
        if train and self.augment is not None:
            images, targets = self.augment(images, targets, generator=generator)
        masks = torch.stack([target["mask"] for target in targets]).long()
        return self.normalize(images), masks

    def criterion(
        self,
        outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor],
        targets: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The configured loss of logits ``(B, K, H, W)`` against masks ``(B, H, W)``.

        ``outputs`` may be a pair ``(logits, aux_logits)`` (a model with ``aux_loss=True`` in training):
        the total is then ``loss(logits) + aux_weight * loss(aux_logits)``; or a list (deep supervision,
        U-Net++ in training): the mean of the heads' losses, plus their detached ``head1..headL``.

        Returns:
            ``{"loss": total}``; with ``"ce+dice"`` also the detached parts ``"ce"`` and ``"dice"`` (of the
            main logits), with auxiliary logits also ``"aux"`` (their detached loss).
        """
        if isinstance(
            outputs, list
        ):  # deep supervision (U-Net++): one logits tensor per head, losses averaged
            heads = [self.criterion(logits, targets)["loss"] for logits in outputs]
            return {
                "loss": torch.stack(heads).mean(),
                **{f"head{k}": h.detach() for k, h in enumerate(heads, 1)},
            }
        if isinstance(outputs, tuple):
            main, aux = outputs
            losses = self.criterion(main, targets)
            aux_loss = self.criterion(aux, targets)["loss"]
            losses["loss"] = losses["loss"] + self.aux_weight * aux_loss
            losses["aux"] = aux_loss.detach()
            return losses
        if self.loss == "focal":
            return {"loss": focal_loss(outputs, targets, self.focal_gamma, ignore_index=self.ignore_index)}
        ce = cross_entropy(outputs, targets, self.ignore_index)
        if self.loss == "ce":
            return {"loss": ce}
        dice = dice_loss(outputs, targets, self.ignore_index)
        return {"loss": ce + dice, "ce": ce.detach(), "dice": dice.detach()}

    def postprocess(
        self,
        outputs: torch.Tensor,
        infos: Sequence[ImageInfo] | None = None,
        options: PredictOptions | None = None,
    ) -> list[ClassMap]:
        """The most likely class of every pixel, cropped to each image and resized (nearest) to its
        original size; without ``infos``, at the model's resolution.

        Shape:
            - outputs: ``(B, K, H, W)`` logits; Output: ``B`` :class:`ClassMap` of ``(H_i, W_i)``
        """
        maps = outputs.argmax(1)
        if infos is None:
            return [ClassMap(m) for m in maps]
        return [ClassMap(info.restore(mask[None])[0]) for mask, info in zip(maps, infos)]

    def draw(self, image: torch.Tensor, prediction: ClassMap) -> torch.Tensor:
        """The image with its class map overlaid in colour."""
        from cnnkit.tasks import plots

        return plots.overlay_mask(image, prediction.mask, self.num_classes)

    def evaluator(self) -> SegmentationEvaluator:
        """A fresh metric accumulator."""
        return SegmentationEvaluator(self.num_classes, self.ignore_index)

    def summary(self, metrics: dict[str, Any], best: float | None = None) -> str:
        """``mIoU M (best B), Dice D``."""
        best_text = f" (best {best:.4f})" if best is not None else ""
        return f"mIoU {metrics['miou']:.4f}{best_text}, Dice {metrics['dice']:.4f}"

    def plot_predictions(
        self, model: nn.Module, val_data: Dataset, device: torch.device, path: pathlib.Path
    ) -> None:
        """Validation images with the predicted mask overlaid, beside the true one."""
        from cnnkit.tasks import plots

        items = sample_items(val_data, self.plot_samples)
        if not items:
            return
        images = torch.stack([image for image, _ in items])
        with torch.no_grad():
            x, masks = self.prepare((images, [t for _, t in items]), train=False, device=device)
            predicted = model(x).argmax(1).cpu()
        drawn = []
        for image, pred, true in zip(images, predicted, masks.cpu()):
            drawn += [
                plots.overlay_mask(image, pred, self.num_classes),
                plots.overlay_mask(image, true, self.num_classes),
            ]
        plots.save_grid(drawn, path, "predicted (left) and true (right) masks", cols=4)
