"""WaNet (Nguyen & Tran 2021): an imperceptible smooth warp.

A k×k field of random offsets, normalised by its mean magnitude, is upsampled bicubically to the image
size and added (scaled by s / H) to the identity sampling grid; ``grid_sample`` then resamples the image.
k = 4, s = 0.5 are WaNet's defaults; the study used k = 224, s = 0.6. With s = 0 the warp is the identity.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from clipbackdoor.attacks.base import Trigger, register


@register("wanet")
class WaNet(Trigger):
    name: Literal["wanet"] = "wanet"
    k: int = Field(4, ge=2, description="control grid size")
    s: float = Field(0.5, ge=0, description="warp strength")

    def artifacts(self, image_size: int) -> dict[str, torch.Tensor]:
        offsets = torch.from_numpy(self.rng(image_size).random((1, 2, self.k, self.k))).float() * 2 - 1
        offsets = offsets / offsets.abs().mean()
        noise = F.interpolate(offsets, size=image_size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, image_size)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        identity = torch.stack((cols, rows), dim=-1).unsqueeze(0)  # grid_sample wants (x, y)
        grid = (identity + self.s * noise / image_size).clamp(-1, 1)
        return {"grid": grid[0]}

    def apply(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        grid = self.artifact("grid", images.shape[-1], images.device)
        grid = grid.unsqueeze(0).expand(images.shape[0], -1, -1, -1)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
