"""Distributed data parallel: ``torchrun --nproc_per_node=N -m cnnkit train ...``.

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :meth:`DistributedContext.from_env` joins the
process group (NCCL on GPUs, gloo on CPU). Each rank trains on its shard of every epoch (the
:class:`~cnnkit.data.sampler.EpochSampler` splits one permutation), gradients are averaged by DDP, metrics
are summed across ranks before they are computed, and only rank 0 writes files or prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistributedContext:
    """Rank, world size and device of this process in a DDP run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @classmethod
    def from_env(cls, device: str = "auto") -> DistributedContext | None:
        """Join the process group described by torchrun's variables; ``None`` for a single process."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=target)

    def wrap(self, model: nn.Module) -> nn.Module:
        """Wrap ``model`` (already on this rank's device) in DistributedDataParallel."""
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over ranks, in place (moved through the backend's device when needed)."""
        moved = tensor.to(self.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved.to(tensor.device))

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier()

    def close(self) -> None:
        """Leave the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()
