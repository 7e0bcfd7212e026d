"""Augmented views for the in-modal self-supervised losses: AutoAugment images and EDA captions.

Each view is a pure function of (seed, epoch, sample index) — the same in a DataLoader worker as in the main
process, after a resume as in an uninterrupted run — and is drawn anew every epoch unless configured not to.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from clipbackdoor.augment.batched import BatchedAutoAugment
from clipbackdoor.augment.text import EDA
from clipbackdoor.augment.wordnet import wordnet
from clipbackdoor.config import AugmentConfig


def view_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 63-bit seed for one view of one sample in one epoch (``stream`` separates image from text)."""
    return int(np.random.SeedSequence([seed, epoch, index, stream]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class ViewMaker:
    """Makes the augmented views the active objectives asked for (``views`` ⊆ {image_aug, text_aug})."""

    views: frozenset[str]
    seed: int
    config: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
        self.batched = BatchedAutoAugment()
        t = self.config.text
        self.eda = EDA(t.alpha_sr, t.alpha_ri, t.alpha_rs, t.p_rd)
        if "text_aug" in self.views and t.alpha_sr + t.alpha_ri > 0:
            # Load WordNet (~0.4 s) now, before training: forked DataLoader workers inherit its tables and
            # open data files of their own (see wordnet()), spawned ones load it themselves.
            wordnet()

    def _epoch(self, epoch: int) -> int:
        return epoch if self.config.fresh_each_epoch else 0

    def image(self, image: Image.Image, epoch: int, index: int) -> Image.Image:
        """AutoAugment (ImageNet policy) of an RGB image; the global RNG is left untouched."""
        # torchvision's AutoAugment draws from the global CPU generator: seed it for this one call and put
        # the state back (default_generator.manual_seed costs ~1 µs; torch.manual_seed ~200 µs).
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(view_seed(self.seed, self._epoch(epoch), index, 0))
        try:
            return self.autoaugment(image)
        finally:
            torch.set_rng_state(state)

    def image_batch(self, images: torch.Tensor, epoch: int, indices: Sequence[int]) -> torch.Tensor:
        """AutoAugment of a uint8 batch [B, 3, H, W] on its device: sample i gets the operations that
        :meth:`image` gives sample ``indices[i]`` (torchvision's draws, from the same seed)."""
        h, w = images.shape[-2:]
        draws = [self.batched.draw(view_seed(self.seed, self._epoch(epoch), i, 0), h, w) for i in indices]
        return self.batched(images, draws)

    def text(self, caption: str, epoch: int, index: int) -> str:
        return self.eda(caption, random.Random(view_seed(self.seed, self._epoch(epoch), index, 1)))
