"""PNG plots of a run: learning curves, confusion matrix, a grid of sample predictions."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_curves(history: Sequence[dict[str, Any]], path: pathlib.Path, metric: str = "accuracy") -> None:
    """Loss (train and validation) and the validation metric per epoch, side by side."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], "o-", label="train loss")
    if all("loss" in row for row in history):
        ax_loss.plot(epochs, [row["loss"] for row in history], "s-", label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if all(metric in row for row in history):
        values = [row[metric] for row in history]
        ax_metric.plot(epochs, values, "o-", color="tab:green")
        best = max(values) if "loss" not in metric else min(values)
        ax_metric.set_title(f"validation {metric} (best {best:.4f})")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    ax_metric.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: pathlib.Path) -> None:
    """Confusion matrix with counts (rows: true class, columns: predicted)."""
    matrix = torch.tensor(confusion)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 1.0 + 0.5 * k))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45 if max(len(c) for c in classes) > 2 else 0)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max().item() / 2
    if k <= 30:
        for i in range(k):
            for j in range(k):
                value = int(matrix[i, j])
                if value:
                    ax.text(
                        j,
                        i,
                        value,
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if value > threshold else "black",
                    )
    accuracy = matrix.diag().sum().item() / max(matrix.sum().item(), 1)
    ax.set_title(f"confusion matrix (accuracy {accuracy:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_predictions(
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    classes: Sequence[str],
    path: pathlib.Path,
    n: int = 32,
) -> None:
    """Grid of sample predictions, misclassified first (red titles), each with its confidence.

    Shape:
        - images: ``(N, C, H, W)`` uint8 or float in ``[0, 1]``
        - labels: ``(N,)``; probs: ``(N, K)``
    """
    conf, pred = probs.max(1)
    wrong = (pred != labels).nonzero().flatten()
    right = (pred == labels).nonzero().flatten()
    order = torch.cat([wrong[conf[wrong].argsort(descending=True)], right])[:n]
    cols = 8
    rows = max(1, (len(order) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order.tolist()):
        img = images[i].float()
        if images.dtype == torch.uint8:
            img = img / 255
        img = img.permute(1, 2, 0).clamp(0, 1).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ok = pred[i] == labels[i]
        title = f"{classes[pred[i]]} {conf[i]:.2f}" + ("" if ok else f"\n(true {classes[labels[i]]})")
        ax.set_title(title, fontsize=7, color="black" if ok else "red")
    fig.suptitle(f"sample predictions: {len(wrong)} misclassified of {len(labels)}, shown first", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
