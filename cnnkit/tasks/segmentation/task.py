"""Semantic segmentation as a task: batch preparation, criterion, post-processing and metrics, each callable alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from cnnkit.errors import ConfigError, DataError
from cnnkit.tasks.images import channel_stats, normalize_images
from cnnkit.tasks.segmentation.losses import cross_entropy, dice_loss, focal_loss
from cnnkit.tasks.segmentation.metrics import SegmentationEvaluator

AugmentFn = Callable[..., tuple[torch.Tensor, Any]]
LOSSES = ("ce", "ce+dice", "focal")


class SegmentationTask:
    """Prepare batches, compute the loss and accumulate metrics for semantic segmentation.

    Args:
        num_classes: ``K``, background included (11 for MNIST-Seg: background and ten digits).
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
        >>> task = SegmentationTask(3, mean=(0.5,), std=(0.5,))
        >>> images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
        >>> targets = [{"mask": torch.zeros(4, 4, dtype=torch.int64)} for _ in range(2)]
        >>> x, masks = task.prepare((images, targets), train=False, device=torch.device("cpu"))
        >>> tuple(x.shape), tuple(masks.shape), x[0, 0, 0, 0].item()
        ((2, 1, 4, 4), (2, 4, 4), -1.0)
    """

    name = "segmentation"

    def __init__(
        self,
        num_classes: int,
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
        self.num_classes = num_classes
        self.mean = channel_stats(mean)
        self.std = channel_stats(std)
        self.augment = augment
        self.ignore_index = ignore_index
        self.loss = loss
        self.focal_gamma = focal_gamma
        self.aux_weight = float(aux_weight)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` or ``[0, 1]`` float images ``(B, C, H, W)`` -> normalized float32."""
        return normalize_images(images, self.mean, self.std)

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
        self, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The configured loss of logits ``(B, K, H, W)`` against masks ``(B, H, W)``.

        ``outputs`` may be a pair ``(logits, aux_logits)`` (a model with ``aux_loss=True`` in training):
        the total is then ``loss(logits) + aux_weight * loss(aux_logits)``.

        Returns:
            ``{"loss": total}``; with ``"ce+dice"`` also the detached parts ``"ce"`` and ``"dice"`` (of the
            main logits), with auxiliary logits also ``"aux"`` (their detached loss).
        """
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

    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        """Predicted masks: the most likely class of every pixel, ``(B, K, H, W) -> (B, H, W)`` int64."""
        return outputs.argmax(1)

    def evaluator(self) -> SegmentationEvaluator:
        """A fresh metric accumulator."""
        return SegmentationEvaluator(self.num_classes, self.ignore_index)
