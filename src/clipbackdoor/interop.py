"""Checkpoints from and for other tools, read without running pickled code.

Read: our safetensors; CleanCLIP / CyCLIP checkpoints (``{"epoch", "state_dict", "optimizer"}`` with
``module.`` prefixes from DataParallel and OpenAI CLIP's key names, which open_clip's CLIP shares);
open_clip training checkpoints (the same layout); plain state dicts (``.pt``, ``.bin``, ``.safetensors``).
Write: open_clip's checkpoint layout, which ``open_clip.load_checkpoint`` and CleanCLIP-style loaders read.

Activation: OpenAI's CLIP code, which CleanCLIP and CyCLIP copy, has QuickGELU in the text transformer (and
in a ViT's image tower); open_clip's models have nn.GELU there unless their name ends in ``-quickgelu``.
The weights cannot show which (same keys, same shapes), so :func:`read_checkpoint` reads it off the file's
layout, and :mod:`clipbackdoor.models` refuses a mismatch instead of silently changing the text features.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's JIT state dicts
DDP_PREFIX = "module."
TORCHSCRIPT_MARK = "constants.pkl"  # a member of every TorchScript archive, of no torch.save file


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as weights; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file's tensors under the model's own key names, and what its layout says it was trained with."""

    path: Path
    state: dict[str, torch.Tensor]
    openai_format: str | None  # the layout showing OpenAI's CLIP code, hence QuickGELU; None: the file does not say


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read any supported checkpoint and tell whether it is OpenAI-format, i.e. trained with QuickGELU.

    OpenAI-format (see :func:`openai_layout`): a CleanCLIP / CyCLIP training checkpoint, or a state dict
    taken from OpenAI's TorchScript model. A TorchScript archive itself (OpenAI's released ``RN50.pt``) is
    OpenAI-format too, but holds code and is refused with the conversion that keeps it recognisable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path}: a TorchScript archive (OpenAI's release format, trained with QuickGELU) holds code and is "
            "not loaded; where you trust it, save its state dict, which keeps OpenAI's entries that mark it: "
            "torch.save(torch.jit.load(path, map_location='cpu').state_dict(), 'openai-state.pt')"
        )
    raw = _load_raw(path)
    layout = openai_layout(raw)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a state dict (or a dict with 'state_dict'), got {type(raw).__name__}")
    state = {}
    for key, value in raw.items():
        key = key.removeprefix(DDP_PREFIX)
        if key in OPENAI_EXTRA_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key] = value
    return Checkpoint(path, state, layout)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of any supported checkpoint, under the model's own key names."""
    return read_checkpoint(path).state


def openai_layout(raw: Any) -> str | None:
    """The layout of a loaded checkpoint that shows OpenAI's CLIP code (so QuickGELU), or None.

    - CleanCLIP / CyCLIP save ``{"epoch", "name", "state_dict", "optimizer"}``, with ``module.`` on every key
      when trained under DDP: a dict with ``epoch`` and ``state_dict`` that has the prefixes or an
      ``optimizer``. open_clip's training checkpoints share this layout whichever activation they had: for
      those only the user can say (``model.checkpoint_quick_gelu``). Our own export writes neither.
    - A state dict with OpenAI's integer entries (``input_resolution``, ``context_length``, ``vocab_size``) was
      taken from OpenAI's TorchScript model.
    A bare state dict is not told apart: open_clip's hub files have OpenAI's key names too, GELU or not.
    """
    if not isinstance(raw, dict):
        return None
    state = raw.get("state_dict")
    if isinstance(state, dict) and "epoch" in raw:
        marks = []
        if state and all(_prefixed(key) for key in state):
            marks.append(f"every key prefixed '{DDP_PREFIX}'")
        if "optimizer" in raw:
            marks.append("an 'optimizer'")
        if marks:
            return f"a CleanCLIP / CyCLIP training checkpoint ('epoch', 'state_dict', {', '.join(marks)})"
    entries = [k for k in OPENAI_EXTRA_KEYS if k in (state if isinstance(state, dict) else raw)]
    if entries:
        return f"a state dict of OpenAI's CLIP (it has OpenAI's {', '.join(entries)} entries)"
    return None


def _prefixed(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(DDP_PREFIX)


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: torch.load would refuse it with a bare RuntimeError."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.rpartition("/")[2] == TORCHSCRIPT_MARK for name in archive.namelist())


def _load_raw(path: Path) -> Any:
    """The file's contents as saved: safetensors, or a torch file of plain data (pickled objects are refused)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: refused, it holds pickled objects, not plain data ({first})") from None


def export_open_clip(state: dict[str, torch.Tensor], out: Path, name: str, epoch: int) -> Path:
    """Write ``state`` as open_clip writes its checkpoints (``.safetensors``: the bare state dict)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if out.suffix == ".safetensors":
        save_file(tensors, str(out), metadata={"model_name": name, "epoch": str(epoch)})
    else:
        torch.save({"epoch": epoch, "name": name, "state_dict": tensors}, out)
    return out
