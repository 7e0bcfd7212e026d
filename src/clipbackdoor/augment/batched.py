"""AutoAugment (ImageNet policy) on a whole uint8 batch at once, each sample with its own draw.

torchvision's ``AutoAugment`` transforms one image per call and draws from the global generator. On the
device, per-sample calls would launch ~10 kernels per image; here every sample's draw is made first, exactly
as torchvision makes it (the same generator calls in the same order, from the sample's own seed), and each
(operation, magnitude) is then applied once to the sub-batch that drew it, with torchvision's own kernels.
So a sample gets the operations and magnitudes that ``ViewMaker.image`` gives it on the CPU path; only the
kernels differ: tensor instead of PIL, within 1.2/255 in mean per image (tests/test_batched_autoaugment.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2

Op = tuple[str, float]  # (torchvision transform id, signed magnitude)


class BatchedAutoAugment:
    """``draw(seed, height, width)`` one sample's operations; ``__call__(images, draws)`` applies them batched."""

    def __init__(self) -> None:
        # torchvision's policy table, magnitude bins and kernels: ours is only the batching
        self.reference = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)

    def draw(self, seed: int, height: int, width: int) -> list[Op]:
        """The operations torchvision's forward would apply to an image of this size after
        ``torch.manual_seed(seed)``: one sub-policy, each of its two operations kept with its probability,
        signed magnitudes negated with probability 1/2."""
        aa, generator = self.reference, torch.Generator().manual_seed(seed)
        policy = aa._policies[int(torch.randint(len(aa._policies), (), generator=generator))]
        ops: list[Op] = []
        for transform_id, probability, magnitude_idx in policy:
            if not torch.rand((), generator=generator) <= probability:
                continue
            magnitudes_fn, signed = aa._AUGMENTATION_SPACE[transform_id]
            magnitudes = magnitudes_fn(10, height, width)
            magnitude = 0.0
            if magnitudes is not None:
                magnitude = float(magnitudes[magnitude_idx])
                if signed and torch.rand((), generator=generator) <= 0.5:
                    magnitude *= -1
            ops.append((transform_id, magnitude))
        return ops

    def __call__(self, images: torch.Tensor, draws: Sequence[list[Op]]) -> torch.Tensor:
        """``images`` (uint8 [B, C, H, W], any device) with sample i transformed by ``draws[i]``, in order."""
        if len(draws) != len(images):
            raise ValueError(f"{len(draws)} draws for {len(images)} images")
        out = images.clone()
        for stage in range(max((len(d) for d in draws), default=0)):
            groups: defaultdict[Op, list[int]] = defaultdict(list)
            for i, ops in enumerate(draws):
                if stage < len(ops):
                    groups[ops[stage]].append(i)
            for op, members in groups.items():
                index = torch.tensor(members, device=images.device)
                out[index] = self.apply(out[index], [op])
        return out

    def apply(self, images: Any, ops: list[Op]) -> Any:
        """``ops`` applied in turn to a PIL image or a uint8 tensor [..., C, H, W] (all of its images)."""
        aa = self.reference
        for transform_id, magnitude in ops:
            images = aa._apply_image_or_video_transform(
                images, transform_id, magnitude, interpolation=aa.interpolation, fill=aa._fill
            )
        return images
