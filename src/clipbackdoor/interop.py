"""Checkpoints from and for other tools, read without running pickled code.

Read: our safetensors; CleanCLIP / CyCLIP checkpoints (``{"epoch", "state_dict", "optimizer"}`` with
``module.`` prefixes from DataParallel and OpenAI CLIP's key names, which open_clip's CLIP shares);
open_clip training checkpoints (the same layout); plain state dicts (``.pt``, ``.bin``, ``.safetensors``).
Write: open_clip's checkpoint layout, which ``open_clip.load_checkpoint`` and CleanCLIP-style loaders read.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's JIT state dicts


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as weights; the message names the file."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of any supported checkpoint, under the model's own key names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        raw: Any = load_file(str(path))
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(f"{path}: refused, it holds pickled objects, not plain data ({first})") from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a state dict (or a dict with 'state_dict'), got {type(raw).__name__}")
    state = {}
    for key, value in raw.items():
        key = key.removeprefix("module.")
        if key in OPENAI_EXTRA_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key] = value
    return state


def export_open_clip(state: dict[str, torch.Tensor], out: Path, name: str, epoch: int) -> Path:
    """Write ``state`` as open_clip writes its checkpoints (``.safetensors``: the bare state dict)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if out.suffix == ".safetensors":
        save_file(tensors, str(out), metadata={"model_name": name, "epoch": str(epoch)})
    else:
        torch.save({"epoch": epoch, "name": name, "state_dict": tensors}, out)
    return out
