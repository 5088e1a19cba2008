"""PNG plots of a run: learning curves, confusion matrix, sample predictions; drawn detections and masks."""

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


def palette(num_colors: int) -> list[tuple[int, int, int]]:
    """``num_colors`` distinct RGB colours (matplotlib's ``tab20``, cycled), one per class."""
    cmap = plt.get_cmap("tab20")
    return [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(num_colors)]


def _rgb(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``(3, H, W)`` from a uint8 or ``[0, 1]`` float ``(C, H, W)`` image (gray repeated)."""
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image[:3]


def draw_detections(
    image: torch.Tensor,
    detections: dict[str, torch.Tensor],
    classes: Sequence[str],
    mask_alpha: float = 0.45,
) -> torch.Tensor:
    """Draw boxes with ``class score`` captions (and instance masks, when present) on an image.

    Uses ``torchvision.utils.draw_bounding_boxes`` / ``draw_segmentation_masks``; one colour per class.

    Shape:
        - image: ``(C, H, W)`` uint8 or float in ``[0, 1]``
        - detections: ``boxes (K, 4)`` xyxy pixels, ``labels (K,)``, optional ``scores (K,)`` and
          ``masks (K, H, W)`` (probabilities or 0/1; drawn where ``>= 0.5``)
        - output: uint8 ``(3, H, W)``
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = _rgb(image.cpu())
    colours = palette(len(classes))
    labels = detections["labels"].cpu().tolist()
    if "masks" in detections and len(labels):
        masks = detections["masks"].cpu() >= 0.5
        canvas = draw_segmentation_masks(canvas, masks, alpha=mask_alpha, colors=[colours[c] for c in labels])
    if not labels:
        return canvas
    scores = detections.get("scores")
    captions = [
        f"{classes[c]}" + (f" {s:.2f}" if scores is not None else "")
        for c, s in zip(labels, (scores.tolist() if scores is not None else [None] * len(labels)))
    ]
    return draw_bounding_boxes(
        canvas, detections["boxes"].cpu().float(), captions, colors=[colours[c] for c in labels], width=1
    )


def overlay_mask(
    image: torch.Tensor, mask: torch.Tensor, num_classes: int, alpha: float = 0.5
) -> torch.Tensor:
    """Colour a semantic mask over an image: class ``k >= 1`` in its colour, background (0) left as it is.

    Shape:
        - image: ``(C, H, W)`` uint8 or float in ``[0, 1]``; mask: ``(H, W)`` int class indices
        - output: uint8 ``(3, H, W)``
    """
    from torchvision.utils import draw_segmentation_masks

    canvas = _rgb(image.cpu())
    mask = mask.cpu()
    present = [k for k in mask.unique().tolist() if 0 < k < num_classes]
    if not present:
        return canvas
    colours = palette(num_classes - 1)
    masks = torch.stack([mask == k for k in present])
    return draw_segmentation_masks(canvas, masks, alpha=alpha, colors=[colours[k - 1] for k in present])


def overlay_heatmap(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
    """Blend a ``[0, 1]`` map over an image in matplotlib's ``jet`` colours (blue 0, red 1), e.g. an
    attention gate's coefficients.

    Shape:
        - image: ``(C, H, W)`` uint8 or float in ``[0, 1]``; heat: ``(H, W)`` float in ``[0, 1]``
        - output: uint8 ``(3, H, W)``
    """
    canvas = _rgb(image.cpu()).float()
    colours = plt.get_cmap("jet")(heat.detach().cpu().float().clamp(0, 1).numpy())[..., :3]
    coloured = torch.from_numpy(colours).permute(2, 0, 1).float() * 255
    return ((1 - alpha) * canvas + alpha * coloured).round().to(torch.uint8)


def side_by_side(images: Sequence[torch.Tensor], gap: int = 2) -> torch.Tensor:
    """uint8 ``(3, H, W_i)`` images of one height in a row, ``gap`` white columns between them.

    Shape:
        - images: ``(3, H, W_i)`` each; output: ``(3, H, sum(W_i) + gap * (len - 1))``
    """
    height = images[0].shape[1]
    white = torch.full((3, height, gap), 255, dtype=torch.uint8)
    parts = [part for image in images for part in (white, image)][1:]
    return torch.cat(parts, dim=2)


def save_grid(images: Sequence[torch.Tensor], path: pathlib.Path, title: str, cols: int = 4) -> None:
    """A grid of uint8 ``(3, H, W)`` images as one PNG (e.g. drawn detections or overlays)."""
    rows = max(1, (len(images) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image in zip(axes.flat, images):
        ax.imshow(image.permute(1, 2, 0).numpy())
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
