"""Feature gathering across ranks with gradients flowing back to the rank that produced each shard.

Every loss here is a *local* loss in open_clip's sense: a rank scores its own rows against the columns of
all ranks, and its loss is normalised by its own batch size. Averaging those losses over ranks (which DDP's
gradient averaging does) gives exactly the single-process loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn


def gather_with_grad(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order; backward sums the gradients into each shard."""
    if world_size == 1:
        return x
    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


def local_targets(batch: int, rank: int, device: torch.device) -> torch.Tensor:
    """Column index of each local row's positive within the gathered batch."""
    return torch.arange(batch, device=device) + batch * rank


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
