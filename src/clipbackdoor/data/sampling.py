"""The epoch's sample order, defined once for the whole experiment and cut into this rank's micro-batches.

Every epoch has one global permutation (seeded by seed and epoch). Optimizer step ``s`` takes the global batch
``perm[s·G : (s+1)·G]``; rank ``r`` takes its contiguous ``1/world`` share of it, cut into micro-batches of
``m`` pairs. A single process accumulating ``k`` micro-batches therefore sees exactly the pairs, in the same
BatchNorm groups, that ``k`` ranks see: the order does not depend on the world size.

A pass over a subset (SafeCLIP's risky and safe sets) permutes the subset instead, seeded by (seed, epoch, the
pass's number), and is cut the same way.

A sample that turns out to be unreadable is replaced by the next good sample in that same global order
(each key carries its successors), so every rank always steps micro-batches of full size and ranks cannot
fall out of step under DDP, whatever is corrupt; the bad one is still counted and named.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from clipbackdoor.data.batching import BatchLayout

# Successors a key carries: this many consecutive unreadable samples stop the run (see PairDataset).
FALLBACKS = 16

SampleKey = tuple[int, int, tuple[int, ...]]  # (epoch, index, the indices that follow it in the global order)


class GlobalBatchSampler(Sampler[list[SampleKey]]):
    """Yields this rank's micro-batches of ``(epoch, index, successors)`` keys for one epoch."""

    def __init__(self, size: int, layout: BatchLayout, rank: int, seed: int, fallbacks: int = FALLBACKS):
        self.size, self.layout, self.rank, self.seed = size, layout, rank, seed
        self.max_fallbacks = fallbacks
        self.fallbacks = min(fallbacks, size - 1)
        self.epoch = 0
        self.subset: np.ndarray | None = None  # dataset indices of the current pass (None: all)
        self.pass_number = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_subset(self, indices: np.ndarray | None, pass_number: int = 0) -> None:
        """The next passes draw from ``indices`` only (None: every sample), permuted by ``pass_number`` too."""
        self.subset, self.pass_number = indices, pass_number
        self.fallbacks = min(self.max_fallbacks, (self.size if indices is None else len(indices)) - 1)

    @property
    def steps(self) -> int:
        return self.layout.steps_per_epoch(self.size if self.subset is None else len(self.subset))

    def __len__(self) -> int:
        return self.steps * self.layout.accum_steps

    def permutation(self) -> list[int]:
        """The epoch's global order (the same rule DistributedSampler uses, so 1-process runs are unchanged);
        for a subset, its indices in an order seeded by (seed, epoch, pass number)."""
        g = torch.Generator()
        if self.subset is None:
            g.manual_seed(self.seed + self.epoch)
            return torch.randperm(self.size, generator=g).tolist()
        seed = np.random.SeedSequence([self.seed, self.epoch, self.pass_number]).generate_state(1)[0]
        g.manual_seed(int(seed))
        return self.subset[torch.randperm(len(self.subset), generator=g).numpy()].tolist()

    def __iter__(self) -> Iterator[list[SampleKey]]:
        perm, lay, k = self.permutation(), self.layout, self.fallbacks
        cyclic = perm + perm[:k]  # successors wrap around the epoch's end; one slice per sample
        for step in range(self.steps):
            first = step * lay.global_batch + self.rank * lay.per_process
            for micro in range(lay.accum_steps):
                start = first + micro * lay.micro_batch
                yield [
                    (self.epoch, perm[p], tuple(cyclic[p + 1 : p + 1 + k]))
                    for p in range(start, start + lay.micro_batch)
                ]
