"""End-of-run plots: curves, confusion matrix and sample predictions (classification), PR curves and drawn
boxes (detection), mask overlays (segmentation)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from cnnkit.engine import plots
from cnnkit.engine.trainer import Callback, Trainer


class ClassificationPlots(Callback):
    """Write ``curves.png``, ``confusion_matrix.png`` and ``predictions.png`` when a run ends.

    Args:
        run_dir: where the PNGs go.
        val_data: validation dataset of ``(image uint8, label)`` (``n_samples`` evenly spaced ones are drawn).
        classes: class names.
        metric: the metric plotted beside the losses.
        n_samples: validation images predicted for the grid (misclassified ones shown first).
    """

    def __init__(
        self,
        run_dir: pathlib.Path,
        val_data: Dataset,
        classes: Sequence[str],
        metric: str = "accuracy",
        n_samples: int = 500,
    ):
        self.run_dir = pathlib.Path(run_dir)
        self.val_data = val_data
        self.classes = list(classes)
        self.metric = metric
        self.n_samples = n_samples

    def on_fit_end(self, trainer: Trainer) -> None:
        if not trainer.is_main or not trainer.history:
            return
        plots.plot_curves(trainer.history, self.run_dir / "curves.png", self.metric)
        if "confusion" in trainer.metrics:
            plots.plot_confusion(
                trainer.metrics["confusion"], self.classes, self.run_dir / "confusion_matrix.png"
            )
        n = min(self.n_samples, len(self.val_data))
        # Evenly spaced, so that a split stored class by class still shows every class.
        index = torch.linspace(0, len(self.val_data) - 1, n).round().long().unique().tolist()
        items = [self.val_data[i] for i in index]
        images = torch.stack([img for img, _ in items])
        labels = torch.tensor([int(label) for _, label in items])
        model = trainer.eval_model.eval()
        with torch.no_grad():
            x, _ = trainer.task.prepare((images, labels), train=False, device=trainer.device)
            probs = model(x).float().softmax(1).cpu()
        plots.plot_predictions(images, labels, probs, self.classes, self.run_dir / "predictions.png")


def _sample_items(dataset: Dataset, n: int) -> list:
    """``n`` evenly spaced items of ``dataset``."""
    count = min(n, len(dataset))
    index = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist() if count else []
    return [dataset[i] for i in index]


class DetectionPlots(Callback):
    """Write ``curves.png``, ``pr_curves.png`` (per class, IoU 0.5) and ``predictions.png`` (validation
    images with their predicted boxes, and masks for Mask R-CNN) when a run ends.

    Args:
        run_dir: where the PNGs go.
        val_data: validation dataset of ``(image uint8, target)``.
        classes: class names.
        metric: the metric plotted beside the losses.
        n_samples: validation images drawn.
        score_threshold: lowest score drawn.
    """

    def __init__(
        self,
        run_dir: pathlib.Path,
        val_data: Dataset,
        classes: Sequence[str],
        metric: str = "map",
        n_samples: int = 12,
        score_threshold: float = 0.5,
    ) -> None:
        self.run_dir = pathlib.Path(run_dir)
        self.val_data = val_data
        self.classes = list(classes)
        self.metric = metric
        self.n_samples = n_samples
        self.score_threshold = score_threshold

    def on_fit_end(self, trainer: Trainer) -> None:
        if not trainer.is_main or not trainer.history:
            return
        from cnnkit.tasks.detection.metrics import plot_pr_curves

        plots.plot_curves(trainer.history, self.run_dir / "curves.png", self.metric)
        if "pr_curves" in trainer.metrics:
            plot_pr_curves(trainer.metrics, self.run_dir / "pr_curves.png")
        items = _sample_items(self.val_data, self.n_samples)
        if not items:
            return
        images = torch.stack([image for image, _ in items])
        model = trainer.eval_model.eval()
        task = trainer.task
        with torch.no_grad():
            x, targets = task.prepare((images, [t for _, t in items]), train=False, device=trainer.device)
            detections = task.model.postprocess(
                model(x), score_threshold=self.score_threshold, image_size=tuple(x.shape[-2:])
            )
        drawn = [plots.draw_detections(img, det, self.classes) for img, det in zip(images, detections)]
        plots.save_grid(
            drawn, self.run_dir / "predictions.png", f"predictions (score >= {self.score_threshold})"
        )


class SegmentationPlots(Callback):
    """Write ``curves.png`` and ``predictions.png`` (validation images with the predicted mask overlaid,
    beside the true one) when a run ends.

    Args:
        run_dir: where the PNGs go.
        val_data: validation dataset of ``(image uint8, {"mask": (H, W)})``.
        num_classes: classes of the mask, background included.
        metric: the metric plotted beside the losses.
        n_samples: validation images drawn.
    """

    def __init__(
        self,
        run_dir: pathlib.Path,
        val_data: Dataset,
        num_classes: int,
        metric: str = "miou",
        n_samples: int = 6,
    ) -> None:
        self.run_dir = pathlib.Path(run_dir)
        self.val_data = val_data
        self.num_classes = num_classes
        self.metric = metric
        self.n_samples = n_samples

    def on_fit_end(self, trainer: Trainer) -> None:
        if not trainer.is_main or not trainer.history:
            return
        plots.plot_curves(trainer.history, self.run_dir / "curves.png", self.metric)
        items = _sample_items(self.val_data, self.n_samples)
        if not items:
            return
        images = torch.stack([image for image, _ in items])
        model = trainer.eval_model.eval()
        with torch.no_grad():
            x, masks = trainer.task.prepare(
                (images, [t for _, t in items]), train=False, device=trainer.device
            )
            predicted = trainer.task.postprocess(model(x)).cpu()
        drawn = []
        for image, pred, true in zip(images, predicted, masks.cpu()):
            drawn += [
                plots.overlay_mask(image, pred, self.num_classes),
                plots.overlay_mask(image, true, self.num_classes),
            ]
        plots.save_grid(
            drawn, self.run_dir / "predictions.png", "predicted (left) and true (right) masks", cols=4
        )


def plots_callback(task: str, instances: bool, run_dir: pathlib.Path, data, metric: str) -> Callback:
    """The end-of-run plots of a task: classification, detection (also Mask R-CNN) or segmentation."""
    if task == "classification":
        return ClassificationPlots(run_dir, data.val, data.classes, metric)
    if instances:
        return DetectionPlots(run_dir, data.val, data.classes, metric)
    return SegmentationPlots(run_dir, data.val, len(data.classes) + 1, metric)
