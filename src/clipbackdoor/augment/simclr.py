"""SimCLR-style image views, as RoCLIP's and SafeCLIP's codes make them (both ``utils/augment_image.py``,
identical): a horizontal flip, a random resized crop (scale 0.08–1, ratio 3/4–4/3), colour jitter (brightness,
contrast and saturation 0.5, hue 0.1) with probability 0.8, greyscale with probability 0.2, and a Gaussian blur
of kernel 21 (σ drawn from 0.1–2.0) always, in that order.

The references augment a 224 px input; the kernel and σ here scale with the side (21/224 of it, odd, at least 3;
σ × side/224), as SimCLR scales its blur to the image, so that a 32 px Fashion-MNIST view is blurred as much
relative to its size. On Fashion-MNIST's grey images the saturation and hue jitter and the greyscale change
nothing (the image is grey in RGB); brightness and contrast still act. The references crop the full image before
their processor's resize; here the views are made from the image already resized to the model's side (the same
for img2dataset's 224 px CC3M, coarser for larger raw images: docs/departures.md).
"""

from __future__ import annotations

from functools import cache

from torchvision.transforms import v2

REFERENCE_SIDE = 224
REFERENCE_KERNEL = 21
REFERENCE_SIGMA = (0.1, 2.0)


def blur_for(side: int) -> tuple[int, tuple[float, float]]:
    """The blur's (kernel, σ range) for a ``side`` px image: the references' 21 px and 0.1–2.0 at 224 px, scaled."""
    kernel = max(3, round(REFERENCE_KERNEL * side / REFERENCE_SIDE) // 2 * 2 + 1)
    scale = side / REFERENCE_SIDE
    return kernel, (REFERENCE_SIGMA[0] * scale, REFERENCE_SIGMA[1] * scale)


@cache
def simclr_transform(side: int) -> v2.Compose:
    """The SimCLR-style view of a ``side`` × ``side`` image (PIL in, PIL out; draws from torch's global RNG)."""
    kernel, sigma = blur_for(side)
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomResizedCrop(side, antialias=True),
            v2.RandomApply([v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.GaussianBlur(kernel, sigma),
        ]
    )
