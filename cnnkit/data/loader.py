"""Batch loading on top of :class:`~cnnkit.data.sampler.EpochSampler`.

In-memory datasets (with ``images`` and ``labels`` tensors, like the bundled MNIST-5k) are indexed in one
gather per batch; any other map-style dataset goes through ``torch.utils.data.DataLoader`` with the
sampler's batches, so worker processes and collate functions work as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from cnnkit.data.sampler import EpochSampler


def default_collate(batch: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor | list[torch.Tensor], Any]:
    """Stack equal-sized images (else keep a list); stack int labels, keep dict targets as a list.

    Shape:
        - Input: list of ``(image (C, H, W), target)``
        - Output: ``(images (B, C, H, W) or list, labels (B,) int64 or list of dicts)``
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    if all(img.shape == images[0].shape for img in images):
        images = torch.stack(images)
    if all(isinstance(t, int) or (isinstance(t, torch.Tensor) and t.ndim == 0) for t in targets):
        targets = torch.as_tensor([int(t) for t in targets], dtype=torch.int64)
    return images, targets


class BatchLoader:
    """Iterate over a dataset in the sampler's batches, epoch by epoch, resumable mid-epoch.

    Args:
        dataset: map-style dataset of ``(image, target)``; a dataset with ``images`` (N, C, H, W) and
            ``labels`` (N,) tensors takes the in-memory fast path.
        sampler: the :class:`EpochSampler` that orders it.
        collate_fn: batch assembly for the generic path (default :func:`default_collate`).
        num_workers: DataLoader worker processes for the generic path.
    """

    def __init__(
        self,
        dataset: Any,
        sampler: EpochSampler,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.collate_fn = collate_fn or default_collate
        self.num_workers = num_workers
        self.in_memory = isinstance(getattr(dataset, "images", None), torch.Tensor) and isinstance(
            getattr(dataset, "labels", None), torch.Tensor
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Any, Any]]:
        """Batches of ``epoch`` from batch index ``start`` on."""
        batches = self.sampler.batches(epoch, start)
        if self.in_memory:
            for idx in batches:
                yield self.dataset.images[idx], self.dataset.labels[idx]
            return
        loader = DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in batches],
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            persistent_workers=False,
        )
        yield from loader
