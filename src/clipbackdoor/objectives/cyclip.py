"""CyCLIP (Goel et al. 2022): cyclic consistency between and within modalities.

cross-modal: (1/N) Σ_jk (⟨I_j, T_k⟩ − ⟨I_k, T_j⟩)²     in-modal: (1/N) Σ_jk (⟨I_j, I_k⟩ − ⟨T_j, T_k⟩)²
on cosine similarities over the global batch (as CyCLIP's released code computes them: mean squared
difference of the logit matrices, divided by s², times the batch size). The term returned is
``cross · L_cross + inmodal · L_in`` with CyCLIP's λ = 0.25 for both; combine it with ``mmcl`` as in the paper:
``objective: {mmcl: 1, cyclip: 1}``.
"""

from __future__ import annotations

import torch

from clipbackdoor.objectives.distributed import gather_with_grad
from clipbackdoor.objectives.registry import Features, Objective, register


@register("cyclip")
class CyCLIP(Objective):
    def __init__(self, rank: int = 0, world_size: int = 1, cross: float = 0.25, inmodal: float = 0.25):
        super().__init__(rank, world_size)
        self.cross, self.inmodal = cross, inmodal

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        image, text = features["image"], features["text"]
        all_image = gather_with_grad(image, self.world_size)
        all_text = gather_with_grad(text, self.world_size)
        batch = len(image)  # local rows against global columns, normalised per rank (see distributed.py)
        cross = (image @ all_text.T - text @ all_image.T).square().sum() / batch
        inmodal = (image @ all_image.T - text @ all_text.T).square().sum() / batch
        return {"loss": self.cross * cross + self.inmodal * inmodal, "crossmodal": cross, "inmodal": inmodal}
