"""Data parallelism of the adversarial trainers: the one place that knows about
:mod:`torch.distributed`.

Without an initialised process group (the default) everything here is the identity: one process
sees the whole global batch. Under ``torchrun`` (an initialised group of ``world_size`` ranks),
every rank iterates over the same global batches and

* takes the positions ``rank, rank + world_size, ...`` of each global batch (its shard), makes
  that shard's adversarial examples itself, from the per-sample noise drawn for the whole
  global batch (so each sample gets the noise it gets in one process);
* scales its loss, a sum over its shard, by ``world_size / global_batch``: DDP averages the
  gradients over the ranks, which then equals the gradient of the global batch's mean loss,
  even when the shards are of unequal size;
* sums its metrics with the other ranks' (an all-reduce) before they are reported;
* lets rank 0 alone write checkpoints.

Models with BatchNorm compute batch statistics per shard under DDP (convert them with
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` for single-process statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DataParallel"]


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the data-parallel ranks (rank 0 of 1 without a group)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DataParallel:
        """The ranks of the initialised default process group, or one process."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Whether this rank writes checkpoints and shows progress."""
        return self.rank == 0

    def shard(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Positions of this rank's shard in a global batch of ``n`` (None: all of it)."""
        if self.world_size == 1:
            return None
        return torch.arange(self.rank, n, self.world_size, device=device)

    def loss_scale(self, n_global: int) -> float:
        """What multiplies the shard's summed loss: ``world_size / n_global``."""
        return self.world_size / n_global

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` (several ranks),
        else ``module`` itself. Only the training forward pass goes through the wrapper; the
        attacks use the bare module (their gradients are with respect to the inputs)."""
        if self.world_size == 1:
            return module
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (in place; ``t`` itself with one rank)."""
        if self.world_size > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def sum_all(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place (one all-reduce per tensor)."""
        for t in tensors:
            self.sum(t)
