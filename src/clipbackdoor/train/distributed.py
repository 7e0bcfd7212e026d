"""Process-group setup for torchrun: gloo on CPU, nccl on GPU; a plain single process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from clipbackdoor.models import resolve_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Average scalar tensors over ranks: per-rank losses are local, their mean is the global loss."""
        if not values:
            return {}
        stacked = torch.stack([v.detach().float() for v in values.values()])
        if self.world_size > 1:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        return dict(zip(values, stacked.tolist(), strict=True))

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: torch.Tensor) -> bool:
        """True on every rank if ``flag`` is true on any rank (so all ranks stop together)."""
        if self.world_size > 1:
            flag = flag.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)


def setup_distributed(device: str) -> DistEnv:
    """Join the torchrun process group if WORLD_SIZE > 1; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistEnv(rank=rank, world_size=world_size, device=dev)
