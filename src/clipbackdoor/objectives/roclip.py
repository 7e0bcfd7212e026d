"""RoCLIP (Yang, Gao & Mirzasoleiman, NeurIPS 2023): pre-training that breaks the image–caption link poisons need.

Follows BigML-CS-UCLA/RoCLIP: ``model/src/train.py`` (the loss and the pool), ``model/src/parser.py``
(defaults), ``model/src/data.py`` and ``model/utils/augment_image.py`` / ``augment_text.py`` (views).

Every ``period``-th epoch, each image is matched not with its own caption but with the caption nearest to it
(cosine) in a pool of captions from earlier steps; the pool is a first-in-first-out memory bank of caption
embeddings, filled during those epochs. A poisoned image rarely finds its poisoned caption there, so the
trigger is not tied to the target. The loss there is CLIP's between each image and its matched caption (the
pool's entries carry no gradient: the text encoder gets a zero gradient in those epochs, as in the reference,
whose own-caption term has weight 0 and keeps it in the graph for DDP; AdamW's moments and weight decay still
move it). The other epochs use the CLIP loss. With the README's ``--cross_aug`` the loss sees only augmented
inputs: a SimCLR-style image view redrawn every load and one EDA caption drawn once
(the objective's view policy; the originals are not encoded at all).

Defaults are the reference code's: ``--memory_bank_size 21845``, ``--break_epoch 2`` (epochs numbered from 1,
so the pool is used in epochs 2, 4, ...). ``matching: false`` is the control that separates the two costs of
the method: the same augmented views under the CLIP loss every epoch. Where we depart (docs/departures.md): the
reference's pool starts as unnormalised random vectors (lightly 1.2.39's memory bank); ours starts empty and a
step with an empty pool uses the batch's own captions (the CLIP loss). Matching (local rows against the gathered
batch, as every loss here) and the pool's update are exact under DDP and gradient accumulation: the pool is
read as it was before the step and updated once, after it, with every rank's captions; it is checkpointed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipbackdoor.augment import ViewPolicy
from clipbackdoor.objectives.distributed import gather_with_grad, local_targets
from clipbackdoor.objectives.registry import Features, Objective, register


def clip_ce(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """½[CE(s·I·T_allᵀ) + CE(s·T·I_allᵀ)] of the local rows against the gathered batch."""
    targets = local_targets(len(image), rank, image.device)
    per_image = scale * image @ gather_with_grad(text, world_size).T
    per_text = scale * text @ gather_with_grad(image, world_size).T
    return 0.5 * (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets))


def gather_detached(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Every rank's ``x`` in rank order, without gradient."""
    if world_size == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


@register("roclip")
class RoCLIP(Objective):
    view_policy = ViewPolicy("simclr", fixed_captions=True)  # utils/augment_image.py; src/data.py:29-30

    def __init__(
        self, rank: int = 0, world_size: int = 1, pool_size: int = 21845, period: int = 2, matching: bool = True
    ):
        super().__init__(rank, world_size)
        if pool_size < 1 or period < 1:
            raise ValueError("roclip: pool_size and period must be >= 1")
        self.pool_size, self.period, self.matching = pool_size, period, matching
        self.pool: torch.Tensor | None = None  # [pool_size, dim], made at the first update
        self.filled, self.cursor, self.epoch = 0, 0, 1

    @property
    def views(self) -> frozenset[str]:
        return frozenset({"image_aug", "text_aug"})

    @property
    def reads_originals(self) -> bool:
        return False

    @property
    def matches_now(self) -> bool:
        """Whether this epoch matches images with pooled captions (never in the ``matching: false`` control)."""
        return self.matching and self.epoch % self.period == 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def nearest(self, image: torch.Tensor) -> torch.Tensor:
        """The pooled caption embedding nearest (cosine) to each image embedding."""
        assert self.pool is not None
        if self.pool.device != image.device:
            self.pool = self.pool.to(image.device)  # once after a resume, not on every pass
        pool = self.pool[: self.filled]  # float32: no cast copy of the whole pool per pass
        return pool[(image.detach().float() @ pool.T).argmax(dim=1)].to(image.dtype)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        image, text, s = features["image_aug"], features["text_aug"], features["logit_scale"]
        if not self.matches_now or self.filled == 0:
            return {"loss": clip_ce(image, text, s, self.rank, self.world_size), "pooled": image.new_zeros(())}
        nn_text = self.nearest(image)  # pool entries: no gradient reaches the text encoder in these epochs
        targets = local_targets(len(image), self.rank, image.device)
        per_image = s * image @ gather_detached(nn_text, self.world_size).T
        per_text = s * nn_text @ gather_with_grad(image, self.world_size).T
        loss = 0.5 * (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets))
        # the reference's `+ 0 * criterion(own captions)`: the text encoder stays in the graph with a zero gradient,
        # which DDP needs (a parameter left out of a step's graph stops the next step)
        return {"loss": loss + 0.0 * text.sum(), "pooled": image.new_ones(())}

    def after_step(self, features: Features) -> None:
        """In a matching epoch, the step's captions (all ranks') go into the pool, oldest out first."""
        if not self.matches_now:
            return
        captions = F.normalize(gather_detached(features["text_aug"], self.world_size).float(), dim=-1)
        if self.pool is None:
            self.pool = captions.new_zeros((self.pool_size, captions.shape[1]))
        self.pool = self.pool.to(captions.device)
        captions = captions[-self.pool_size :]  # a batch larger than the pool keeps its last rows
        slots = (self.cursor + torch.arange(len(captions), device=captions.device)) % self.pool_size
        self.pool[slots] = captions
        self.cursor = (self.cursor + len(captions)) % self.pool_size
        self.filled = min(self.filled + len(captions), self.pool_size)

    def get_extra_state(self) -> dict[str, Any]:
        return {"pool": self.pool, "filled": self.filled, "cursor": self.cursor}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.pool, self.filled, self.cursor = state["pool"], state["filled"], state["cursor"]
