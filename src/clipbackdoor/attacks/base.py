"""Trigger base class and registry.

A trigger is a pydantic model (validated, serialisable parameters) that turns clean pixels into triggered
ones. It works on a batch of float tensors in [0, 1] (evaluation, on the device) and on one PIL image
(writing poisoned data) with the same result: the PIL path quantises the batch path's output to uint8.

Anything random is drawn from the trigger's ``seed``: fixed patterns and warp grids from (seed, image size),
per-image choices (a random position, fresh noise) from (seed, sample index). The realised artefacts
(pattern, grid) are returned by :meth:`Trigger.artifacts` and saved with the poison manifest.

Sizes are given in pixels at ``reference_size`` (224 by default, the study's input size) and scaled
linearly to the image they are applied to: ``round(size · image_size / reference_size)``, at least 1 px.
A 16 px BadNet patch at 224 px is thus 2 px at 28 px; to get a 4 px patch on 32 px Fashion-MNIST write
``size: 4, reference_size: 32``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from clipbackdoor.registry import Registry, build_from_spec


class Trigger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    seed: int = Field(0, description="all of the trigger's randomness derives from this")
    reference_size: int = Field(224, ge=1, description="image size at which pixel sizes are given")
    _cache: dict[str, torch.Tensor] = PrivateAttr(default_factory=dict)

    def scaled(self, pixels: int, image_size: int) -> int:
        """``pixels`` at ``reference_size`` on an ``image_size`` image: at least 1 px, at most the image."""
        return min(image_size, max(1, round(pixels * image_size / self.reference_size)))

    def rng(self, *key: int) -> np.random.Generator:
        """A generator for one purpose: ``rng(image_size)`` for fixed artefacts, ``rng(size, index)`` per image."""
        return np.random.default_rng([self.seed, *key])

    def artifacts(self, image_size: int) -> dict[str, torch.Tensor]:
        """Fixed tensors this trigger uses at ``image_size`` (patterns, grids); saved with the manifest."""
        return {}

    def load_artifacts(self, tensors: dict[str, torch.Tensor]) -> None:
        """Use saved artefacts (keys ``"<key>@<size>"``) instead of re-deriving them."""
        self._cache.update(tensors)

    def artifact(self, key: str, image_size: int, device: torch.device | None = None) -> torch.Tensor:
        """One artefact at one size, derived once and cached (keys are ``"<key>@<size>"``)."""
        full = f"{key}@{image_size}"
        if full not in self._cache:
            self._cache.update({f"{k}@{image_size}": v for k, v in self.artifacts(image_size).items()})
        return self._cache[full].to(device) if device is not None else self._cache[full]

    def apply(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Triggered copy of ``images`` (float [B, 3, H, W] in [0, 1]); ``indices`` seed per-image choices."""
        raise NotImplementedError

    def apply_pil(self, image: Image.Image, index: int) -> Image.Image:
        """The same trigger on one RGB image, quantised back to uint8."""
        x = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float().div(255)
        y = self.apply(x.unsqueeze(0), torch.tensor([index]))[0]
        return Image.fromarray(to_uint8(y).permute(1, 2, 0).numpy(), mode="RGB")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


TRIGGERS: Registry[Trigger] = Registry("trigger")
register = TRIGGERS.register


class TriggerError(ValueError):
    """Invalid trigger parameters; the message names the key."""


def build_trigger(spec: dict[str, Any], where: str = "trigger") -> Trigger:
    """A trigger from its config mapping, e.g. ``{name: badnet, size: 16, pattern: noise}``."""
    return build_from_spec(TRIGGERS, spec, where, TriggerError)
