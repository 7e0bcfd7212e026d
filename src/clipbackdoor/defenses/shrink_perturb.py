"""Shrink & perturb (Ash & Adams 2020), once before cleaning: θ ← λ_shrink·θ + λ_perturb·θ₀, where θ₀ is a
fresh random initialisation of the same architecture (seeded). The study used 0.95 and 1e-4, then cleaned
with the CleanCLIP objective.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from clipbackdoor.defenses.registry import Defense, register
from clipbackdoor.hooks import Hook, LoopContext
from clipbackdoor.models import ClipBundle, create_model


def shrink_perturb_(model: torch.nn.Module, fresh: torch.nn.Module, shrink: float, perturb: float) -> None:
    """In place: every parameter becomes shrink·θ + perturb·θ_fresh (buffers such as BN statistics stay)."""
    fresh_params = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.mul_(shrink).add_(fresh_params[name].to(param.device), alpha=perturb)


class ShrinkPerturbHook(Hook):
    def __init__(self, shrink: float, perturb: float):
        self.shrink, self.perturb = shrink, perturb

    def before_training(self, ctx: LoopContext) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed + 1)
            # a random initialisation: neither the run's checkpoint nor its pretrained weights
            fresh = create_model(ctx.model_config.model_copy(update={"checkpoint": None, "pretrained": None})).model
        shrink_perturb_(ctx.bundle.model, fresh, self.shrink, self.perturb)


@register("shrink-perturb")
class ShrinkPerturb(Defense):
    name: Literal["shrink-perturb"] = "shrink-perturb"
    shrink: float = Field(0.95, ge=0, le=1, description="λ_shrink")
    perturb: float = Field(1e-4, ge=0, description="λ_perturb")

    def hooks(self, bundle: ClipBundle) -> list[Hook]:
        return [ShrinkPerturbHook(self.shrink, self.perturb)]
