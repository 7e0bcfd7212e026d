"""MMCL: the CLIP loss, ½[CE(s·I·Tᵀ) + CE(s·T·Iᵀ)] over the batch gathered from all ranks.

Built on open_clip's ClipLoss with local loss + gather-with-grad: each rank scores its own rows against
every rank's features, and gradients flow back to the rank that produced them.
"""

from __future__ import annotations

import torch
from open_clip.loss import ClipLoss

from clipbackdoor.objectives.registry import Features, Objective, register


@register("mmcl")
class MMCL(Objective):
    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__(rank, world_size)
        self.clip_loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        loss = self.clip_loss(features["image"], features["text"], features["logit_scale"])
        return {"loss": loss}
