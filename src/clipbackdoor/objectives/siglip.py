"""SigLIP (Zhai et al. 2023): pairwise sigmoid loss, open_clip's implementation.

It needs a learned bias: models trained with it get ``logit_bias`` (init −10) and ``logit_scale`` (init
ln 10) as in the paper, unless the config sets ``model.init_logit_bias`` / ``model.init_logit_scale``.
"""

from __future__ import annotations

import math

import torch
from open_clip.loss import SigLipLoss

from clipbackdoor.objectives.registry import Features, Objective, register


@register("siglip")
class SigLIP(Objective):
    model_defaults = {"init_logit_bias": -10.0, "init_logit_scale": math.log(10.0)}  # noqa: RUF012

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__(rank, world_size)
        self.siglip = SigLipLoss(rank=rank, world_size=world_size)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        if "logit_bias" not in features:
            raise ValueError("siglip needs a model with logit_bias (model.init_logit_bias)")
        loss = self.siglip(features["image"], features["text"], features["logit_scale"], features["logit_bias"])
        return {"loss": loss}
