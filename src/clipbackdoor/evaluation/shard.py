"""Evaluation split over the ranks of a process group, with results equal to one process's.

Each rank encodes whole batches of the single-process order: batch ``b`` goes to rank ``b mod W``. So every
image is encoded in exactly the batch one process would put it in (same shapes, same kernels), and what
the ranks sum, counts or rows placed by dataset index, is what one process would have computed.
With ``world_size == 1`` every method is the identity and the loader is the single-process one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from clipbackdoor.data import BadRow, collate_skipping_bad


@dataclass(frozen=True)
class EvalShard:
    """This rank's part of an evaluation; every rank must make the same calls, in the same order."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside [0, world_size={self.world_size})")

    def indices(self, n: int, batch_size: int) -> list[int]:
        """Dataset indices of this rank's whole batches (rank r: batches r, r + W, ...), in order."""
        starts = range(self.rank * batch_size, n, self.world_size * batch_size)
        return [i for start in starts for i in range(start, min(start + batch_size, n))]

    def loader(self, dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
        """This rank's batches, unshuffled and skipping bad rows; built once, reused every epoch."""
        subset = Subset(dataset, self.indices(len(dataset), batch_size))  # type: ignore[arg-type]
        return DataLoader(
            subset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_skipping_bad,
            persistent_workers=num_workers > 0,
        )

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks, in place (on the model's device: gloo on CPU, nccl on GPU)."""
        if self.world_size > 1:
            dist.all_reduce(values)
        return values

    def counts(self, values: list[int], device: torch.device) -> list[int]:
        """Integer counts summed over the ranks: shares are taken of global numerators and denominators."""
        return self.sum(torch.tensor(values, dtype=torch.int64, device=device)).tolist()

    def rows(self, n: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """[n, ...] holding each rank's ``values`` at its dataset ``index`` (zeros where no rank has a row).

        Each row comes from one rank and the others add exact zeros, so the sum is a lossless all-gather
        in dataset order, whatever the shard sizes."""
        full = values.new_zeros((n, *values.shape[1:]))
        full[index.to(values.device)] = values
        return self.sum(full)

    def bad_rows(self, rows: list[BadRow]) -> list[BadRow]:
        """Every rank's bad rows, so each rank's log counts the whole eval set's, as one process would."""
        if self.world_size == 1:
            return rows
        gathered: list[list[BadRow]] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(gathered, rows)
        return [row for part in gathered for row in part]
