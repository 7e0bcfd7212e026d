"""SSL: CleanCLIP's in-modal self-supervised loss, L = ½[image·CE(s·I·Ĩᵀ) + text·CE(s·T·T̃ᵀ)].

Each pair's original embedding (rows) must pick out its own augmented view (columns) among the augmented
views of the whole (gathered) batch: one direction per modality, with the model's learned temperature s.
``image`` and ``text`` weight the two parts (1 and 1 in the study); a part weighted 0 is not computed and
its augmented view is not even made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipbackdoor.augment import ViewPolicy
from clipbackdoor.objectives.distributed import gather_with_grad, local_targets
from clipbackdoor.objectives.registry import Features, Objective, register


def in_modal_ce(
    original: torch.Tensor, augmented: torch.Tensor, scale: torch.Tensor, rank: int, world_size: int
) -> torch.Tensor:
    logits = scale * original @ gather_with_grad(augmented, world_size).T
    return F.cross_entropy(logits, local_targets(len(original), rank, original.device))


@register("ssl")
class SSL(Objective):
    view_policy = ViewPolicy("autoaugment-imagenet", fixed_captions=False)  # CleanCLIP's AutoAugment and EDA

    def __init__(self, rank: int = 0, world_size: int = 1, image: float = 1.0, text: float = 1.0):
        super().__init__(rank, world_size)
        if image < 0 or text < 0 or image + text == 0:
            raise ValueError("ssl: image and text weights must be >= 0 and not both 0")
        self.image, self.text = image, text

    @property
    def views(self) -> frozenset[str]:
        return frozenset(v for v, w in (("image_aug", self.image), ("text_aug", self.text)) if w > 0)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        s = features["logit_scale"]
        zero = features["image"].new_zeros(())
        image = (
            in_modal_ce(features["image"], features["image_aug"], s, self.rank, self.world_size)
            if self.image > 0
            else zero
        )
        text = (
            in_modal_ce(features["text"], features["text_aug"], s, self.rank, self.world_size)
            if self.text > 0
            else zero
        )
        return {"loss": 0.5 * (self.image * image + self.text * text), "image": image, "text": text}
