"""One meaning of the batch size: ``train.batch_size`` is the experiment's global batch.

The same config on 1, 2 or 8 processes is the same experiment: the same pairs per optimizer step, steps per
epoch and schedule, and the same contrastive batch (features are gathered over ranks and cached over
accumulated micro-batches, so every pair meets every other pair of its global batch as a negative).

``train.micro_batch`` is what one forward pass sees, and with it RN50's BatchNorm group. Per-process batch
and accumulation are derived: per_process = global / world size, accum_steps = per_process / micro_batch.
8 GPUs × 256 and 1 GPU accumulating 8 × 256 see the same BatchNorm groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from clipbackdoor.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is split over processes and, within a process, over micro-batches."""

    global_batch: int
    world_size: int
    per_process: int
    micro_batch: int
    accum_steps: int

    def steps_per_epoch(self, pairs: int) -> int:
        """Optimizer steps in an epoch of ``pairs`` pairs: whole global batches only (the rest is dropped)."""
        return pairs // self.global_batch

    def record(self) -> dict[str, int]:
        """For metrics and run metadata (not for the config's identity: a run may resume on other GPUs)."""
        return {f"batch/{k}": v for k, v in asdict(self).items()}


def batch_layout(train: TrainConfig, world_size: int) -> BatchLayout:
    """Derive the per-process batch and accumulation; a global batch that does not split evenly is an error."""
    if train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={train.batch_size} (the global batch) does not split evenly over {world_size} processes"
        )
    per_process = train.batch_size // world_size
    micro = train.micro_batch or per_process
    if micro > per_process or per_process % micro:
        raise ConfigError(
            f"train.micro_batch={micro} must divide the per-process batch {per_process} "
            f"(train.batch_size={train.batch_size} over {world_size} processes)"
        )
    return BatchLayout(train.batch_size, world_size, per_process, micro, per_process // micro)
