"""End-of-run plots for classification: curves, confusion matrix, sample predictions."""

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
