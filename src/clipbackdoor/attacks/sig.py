"""SIG (Barni et al. 2019): a horizontal sinusoid, x' = clip(x + Δ·sin(2π·f·j / W)) for column j."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from clipbackdoor.attacks.base import Trigger, register


@register("sig")
class SIG(Trigger):
    name: Literal["sig"] = "sig"
    amplitude: float = Field(60 / 255, ge=0, le=1, description="Δ, in [0, 1] pixel units (60/255)")
    frequency: float = Field(6.0, gt=0, description="f: periods across the image width")

    def artifacts(self, image_size: int) -> dict[str, torch.Tensor]:
        j = torch.arange(image_size, dtype=torch.float32)
        wave = self.amplitude * torch.sin(2 * math.pi * self.frequency * j / image_size)
        return {"signal": wave.view(1, 1, image_size).expand(3, image_size, image_size).clone()}

    def apply(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return (images + self.artifact("signal", images.shape[-1], images.device)).clamp(0, 1)
