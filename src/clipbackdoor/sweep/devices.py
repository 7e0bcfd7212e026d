"""Device slots: which GPUs each sweep worker's trials may use.

A sweep knows the devices it may use: given (``devices: [0, 1, 2, 3]``, ``--devices 0,1,2,3``) or detected
(every visible CUDA device; none on CPU). They are cut into slots of ``devices_per_trial`` devices; each
worker thread owns one slot for the whole sweep and runs its trials with ``CUDA_VISIBLE_DEVICES`` set to
it, so no two trials share a device. On CPU the slots are just process slots and the environment is left
as it is. Several sweep processes on one machine do not know of each other: give each its own ``--devices``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from clipbackdoor.config import ConfigError

Slot = tuple[str, ...]  # the devices of one slot; () = a process slot (CPU)


def parse_devices(value: Any) -> list[str] | None:
    """``None`` (detect), a list, one index, or a comma-separated string ("0,1,2,3"; "" = none) -> names."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value]
    return value  # let pydantic name the wrong type


def detect_devices() -> list[str]:
    """The CUDA devices this process sees, as names its children understand (none on CPU).

    Under an inherited ``CUDA_VISIBLE_DEVICES=2,3`` the children must be given "2" or "3", not the
    indices 0 and 1 torch uses in here.
    """
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    return parse_devices(visible)[:count]


def resolve_devices(devices: list[str] | None) -> list[str]:
    return detect_devices() if devices is None else list(devices)


def device_slots(devices: list[str], per_trial: int, workers: int) -> list[Slot]:
    """One slot per worker: ``per_trial`` devices each, disjoint; ``workers`` process slots without devices."""
    if not devices:
        return [()] * workers
    if len(set(devices)) != len(devices):
        raise ConfigError(f"devices {devices} names a device twice")
    slots = [tuple(devices[i : i + per_trial]) for i in range(0, len(devices) - per_trial + 1, per_trial)]
    if workers > len(slots):
        raise ConfigError(
            f"{workers} workers need {workers} slots of {per_trial} device(s), but devices {','.join(devices)} "
            f"make {len(slots)}: use --workers {len(slots) or 1} or fewer, fewer devices per trial, or more devices"
        )
    return slots[:workers]


def slot_env(env: Mapping[str, str], slot: Slot) -> dict[str, str]:
    """The trial's environment: its slot's devices only (unchanged for a process slot)."""
    env = dict(env)
    if slot:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
    return env
