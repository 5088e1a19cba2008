"""A resumable, shardable epoch sampler.

The order of epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``, so it depends
on nothing else: a run resumed at (epoch, batch) sees exactly the batches an uninterrupted run would, and
under DDP each rank takes every ``world_size``-th index of the same permutation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


class EpochSampler:
    """Batches of indices for one epoch at a time, deterministic in ``(seed, epoch)``.

    Args:
        num_samples: dataset length ``N``.
        batch_size: indices per batch (per rank).
        shuffle: permute each epoch (else ``0..N-1``).
        drop_last: drop the last incomplete batch.
        seed: base seed.
        rank / world_size: DDP shard; every rank gets ``ceil(N / world_size)`` indices (the permutation is
            padded by wrapping around so all ranks take the same number of steps).

    Example:
        >>> s = EpochSampler(10, batch_size=4, shuffle=False)
        >>> [b.tolist() for b in s.batches(epoch=0)]
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"cannot sample from an empty dataset (num_samples={num_samples})")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = math.ceil(num_samples / world_size)

    def __len__(self) -> int:
        """Batches per epoch (per rank)."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``, ``(ceil(N / world_size),)`` int64."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        total = self.per_rank * self.world_size
        if total > self.num_samples:
            order = torch.cat([order, order[: total - self.num_samples]])
        return order[self.rank : total : self.world_size]

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Index batches of ``epoch``, skipping the first ``start`` batches (to resume mid-epoch)."""
        idx = self.indices(epoch)
        for b in range(start, len(self)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]
