"""Blended trigger (Chen et al. 2017): x' = (1 − α)·x + α·pattern.

The pattern is one fixed uniform-noise image (the standard attack, saved with the manifest), an image
file, or (``fresh_noise``) new noise for every image as the study's reference code did.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from clipbackdoor.attacks.base import Trigger, register


@register("blended")
class Blended(Trigger):
    name: Literal["blended"] = "blended"
    alpha: float = Field(0.2, ge=0, le=1)
    image: str | None = Field(None, description="a pattern image file; default: seeded uniform noise")
    fresh_noise: bool = False

    def artifacts(self, image_size: int) -> dict[str, torch.Tensor]:
        if self.image is not None:
            with Image.open(self.image) as im:
                im = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
                pattern = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
        else:
            pattern = torch.from_numpy(self.rng(image_size).random((3, image_size, image_size))).float()
        return {"pattern": pattern}

    def apply(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        size = images.shape[-1]
        if self.fresh_noise and self.image is None:
            pattern = torch.stack(
                [torch.from_numpy(self.rng(size, i).random((3, size, size))).float() for i in indices.tolist()]
            ).to(images.device)
        else:
            pattern = self.artifact("pattern", size, images.device).unsqueeze(0)
        return (1 - self.alpha) * images + self.alpha * pattern
