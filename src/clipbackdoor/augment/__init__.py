"""Augmented views for the losses that read them: AutoAugment (CleanCLIP) or SimCLR-style (RoCLIP, SafeCLIP)
images, and EDA captions.

Each view is a pure function of (seed, epoch, sample index, which view) — the same in a DataLoader worker as in
the main process, after a resume as in an uninterrupted run — and is drawn anew every epoch unless configured
not to. A loss reads up to two views of each modality: ``image_aug`` / ``text_aug`` and, for SafeCLIP's two
augmented views, ``image_aug2`` / ``text_aug2``. Which image policy, and whether captions are drawn once (the
RoCLIP and SafeCLIP codes draw them when the data set is built), is the objective's :class:`ViewPolicy` unless
the config's ``augment`` section says otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from clipbackdoor.augment.batched import BatchedAutoAugment
from clipbackdoor.augment.simclr import simclr_transform
from clipbackdoor.augment.text import EDA
from clipbackdoor.augment.wordnet import wordnet
from clipbackdoor.config import AugmentConfig

IMAGE_VIEWS = ("image_aug", "image_aug2")
TEXT_VIEWS = ("text_aug", "text_aug2")
STREAMS = {"image_aug": 0, "text_aug": 1, "image_aug2": 2, "text_aug2": 3}  # one random stream per view
ImagePolicy = Literal["autoaugment-imagenet", "simclr"]


@dataclass(frozen=True)
class ViewPolicy:
    """How an objective's reference code makes its views: the image augmentation, and whether captions are drawn
    once (fixed for the whole run) rather than anew every epoch."""

    image: ImagePolicy = "autoaugment-imagenet"
    fixed_captions: bool = False


def view_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 63-bit seed for one view of one sample in one epoch (``stream`` separates image from text)."""
    return int(np.random.SeedSequence([seed, epoch, index, stream]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class ViewMaker:
    """Makes the augmented views the active objectives asked for (``views`` ⊆ IMAGE_VIEWS + TEXT_VIEWS), by
    ``config.image`` and ``config.fixed_captions`` (a resolved config sets both from the objective's policy)."""

    views: frozenset[str]
    seed: int
    config: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        self.policy: ImagePolicy = self.config.image or "autoaugment-imagenet"
        self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
        self.batched = BatchedAutoAugment()
        t = self.config.text
        self.eda = EDA(t.alpha_sr, t.alpha_ri, t.alpha_rs, t.p_rd)
        if self.views & set(TEXT_VIEWS) and t.alpha_sr + t.alpha_ri > 0:
            # Load WordNet (~0.4 s) now, before training: forked DataLoader workers inherit its tables and
            # open data files of their own (see wordnet()), spawned ones load it themselves.
            wordnet()

    @property
    def image_views(self) -> tuple[str, ...]:
        return tuple(v for v in IMAGE_VIEWS if v in self.views)

    @property
    def text_views(self) -> tuple[str, ...]:
        return tuple(v for v in TEXT_VIEWS if v in self.views)

    def _epoch(self, epoch: int) -> int:
        return epoch if self.config.fresh_each_epoch else 0

    def image(self, image: Image.Image, epoch: int, index: int, view: str = "image_aug") -> Image.Image:
        """The ``view`` of an RGB image under the policy (AutoAugment's ImageNet policy, or SimCLR's); the
        global RNG is left untouched."""
        transform = self.autoaugment if self.policy == "autoaugment-imagenet" else simclr_transform(image.width)
        # torchvision's transforms draw from the global CPU generator: seed it for this one call and put the
        # state back (default_generator.manual_seed costs ~1 µs; torch.manual_seed ~200 µs).
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(view_seed(self.seed, self._epoch(epoch), index, STREAMS[view]))
        try:
            return transform(image)
        finally:
            torch.set_rng_state(state)

    def image_batch(self, images: torch.Tensor, epoch: int, indices: Sequence[int]) -> torch.Tensor:
        """AutoAugment of a uint8 batch [B, 3, H, W] on its device: sample i gets the operations that
        :meth:`image` gives sample ``indices[i]`` (torchvision's draws, from the same seed). Only the
        AutoAugment policy's ``image_aug`` has a batched form (the device-decode path refuses the others)."""
        assert self.policy == "autoaugment-imagenet" and self.image_views == ("image_aug",), "no batched form"
        h, w = images.shape[-2:]
        draws = [self.batched.draw(view_seed(self.seed, self._epoch(epoch), i, 0), h, w) for i in indices]
        return self.batched(images, draws)

    def text(self, caption: str, epoch: int, index: int, view: str = "text_aug") -> str:
        """The ``view`` EDA caption; with ``fixed_captions`` the same every epoch (drawn as at epoch 0)."""
        epoch = 0 if self.config.fixed_captions else self._epoch(epoch)
        return self.eda(caption, random.Random(view_seed(self.seed, epoch, index, STREAMS[view])))
