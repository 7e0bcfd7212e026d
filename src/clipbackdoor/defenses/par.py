"""PAR, Perturb and Recover (Singh, Croce & Hein 2024): L = L_CLIP − λ·L_PERT.

L_PERT pushes the cleaned model's embeddings away from those of the frozen poisoned model on the same
batch, capped at τ so the push stops once the model has moved far enough and the CLIP loss recovers
clean performance: L_PERT = mean_i min(‖e_i − e⁰_i‖², τ), summed over the image and text embeddings
(L2-normalised, so ‖·‖² ≤ 4). τ trades clean accuracy against ASR; 1.0 and λ = 1 are this tool's defaults.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from clipbackdoor.defenses.registry import Defense, register
from clipbackdoor.hooks import Hook, LoopContext
from clipbackdoor.models import ClipBundle, create_model


class PARHook(Hook):
    def __init__(self, weight: float, cap: float):
        self.weight, self.cap = weight, cap
        self.frozen: ClipBundle | None = None

    def setup(self, ctx: LoopContext) -> None:
        # Always the poisoned starting point, also when a resumed run's model has already moved.
        self.frozen = create_model(ctx.model_config)
        self.frozen.model.to(ctx.device).eval().requires_grad_(False)
        self.frozen.normalize.to(ctx.device)

    def loss(self, features: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert self.frozen is not None, "setup runs before training"
        device = features["image"].device
        with torch.no_grad():
            image0 = self.frozen.model.encode_image(self.frozen.normalize(batch["image"].to(device)), normalize=True)
            text0 = self.frozen.model.encode_text(batch["text"].to(device), normalize=True)
        image = (features["image"] - image0).square().sum(dim=1).clamp(max=self.cap).mean()
        text = (features["text"] - text0).square().sum(dim=1).clamp(max=self.cap).mean()
        return {"loss": -self.weight * (image + text), "pert_image": image, "pert_text": text}


@register("par")
class PAR(Defense):
    name: Literal["par"] = "par"
    ssl: float = Field(0.0, ge=0, description="PAR cleans with the CLIP loss alone by default")
    weight: float = Field(1.0, ge=0, description="λ of the perturbation term")
    cap: float = Field(1.0, gt=0, le=4, description="τ: the squared embedding distance at which the push stops")

    def hooks(self, bundle: ClipBundle) -> list[Hook]:
        return [PARHook(self.weight, self.cap)]
