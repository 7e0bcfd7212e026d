"""BadCLIP's trigger (Liang et al., CVPR 2024): an optimised patch pasted at the image centre.

The patch is what :mod:`clipbackdoor.attacks.patch_optimization` learns against a frozen surrogate CLIP, a
float tensor [3, s, s] in [0, 1] kept losslessly in a safetensors file (its code saves it with ``cv2`` as a
JPEG, red and blue swapped: a departure, docs/departures.md). It is pasted as the reference's
``embed_patch`` and ``apply_trigger(location="middle")`` paste it: rows and columns from
``int(int(H / 2) - s / 2)``, replacing the pixels. On an image of another size than ``reference_size`` the
patch is resized (bicubic, antialiased, clipped to [0, 1]) to the scaled side, as the reference resizes its
patch file with PIL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file, save_file

from clipbackdoor.attacks.base import Trigger, TriggerError, register

PATCH_KEY = "patch"


@register("badclip")
class BadCLIPPatch(Trigger):
    name: Literal["badclip"] = "badclip"
    patch: str = Field(description="the optimised patch: a safetensors file written by the patch optimisation")
    size: int = Field(16, ge=1, description="patch side in pixels at reference_size (the reference's 16 at 224)")

    def artifacts(self, image_size: int) -> dict[str, torch.Tensor]:
        patch = load_patch(self.patch)
        side = self.scaled(self.size, image_size)
        if patch.shape[-1] != side:
            patch = F.interpolate(patch[None], size=(side, side), mode="bicubic", antialias=True)[0].clamp(0, 1)
        return {"patch": patch}

    def apply(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return paste_centre(images, self.artifact("patch", images.shape[-1], images.device))


def centre_offset(extent: int, side: int) -> int:
    """Where a ``side`` patch starts on an ``extent`` axis: the reference's ``int(c0 - l / 2)``, ``c0 = int(H / 2)``."""
    return int(int(extent / 2) - side / 2)


def paste_centre(images: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """``images`` [B, 3, H, W] with ``patch`` [3, s, s] replacing their centre pixels (differentiable in the patch)."""
    side = patch.shape[-1]
    row, col = centre_offset(images.shape[-2], side), centre_offset(images.shape[-1], side)
    out = images.clone()
    out[:, :, row : row + side, col : col + side] = patch
    return out


def save_patch(patch: torch.Tensor, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a patch [3, s, s] losslessly (float32 safetensors), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({PATCH_KEY: patch.detach().float().cpu().contiguous()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load_patch(path: str | Path) -> torch.Tensor:
    """A patch written by :func:`save_patch`; a TriggerError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise TriggerError(
            f"trigger.patch: {path} does not exist; optimise it first (poison.optimize, or a study's badclip attack)"
        )
    tensors = load_file(str(path))
    patch = tensors.get(PATCH_KEY)
    if patch is None or patch.ndim != 3 or patch.shape[0] != 3 or patch.shape[1] != patch.shape[2]:
        raise TriggerError(f"trigger.patch: {path} holds no square RGB patch under key {PATCH_KEY!r}")
    return patch
