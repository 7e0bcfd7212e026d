"""Batched AutoAugment gives each sample the operations torchvision's per-image AutoAugment gives it."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from clipbackdoor.augment import ViewMaker, view_seed
from clipbackdoor.augment.batched import BatchedAutoAugment


def _images(n: int, size: int = 48) -> torch.Tensor:
    """Smooth colour gradients with a few blocks: content every operation visibly changes."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a * x, b * y, c * (1 - x * y)], axis=-1) * 255
        r, s = rng.integers(0, size - 12, 2)
        img[r : r + 12, s : s + 12] = rng.integers(0, 256, 3)
        out.append(torch.from_numpy(img.astype(np.uint8)).permute(2, 0, 1))
    return torch.stack(out)


def test_draws_are_torchvisions_and_applying_them_on_pil_is_exact() -> None:
    """The same operations as ``ViewMaker.image`` (torchvision's forward after seeding): applied through
    torchvision's kernels on the PIL image, they give the very same pixels."""
    views, batched, images = ViewMaker(frozenset({"image_aug"}), seed=3), BatchedAutoAugment(), _images(24)
    applied = 0
    for index, image in enumerate(images):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        ops = batched.draw(view_seed(3, 1, index, 0), 48, 48)
        mine = batched.apply(pil, ops)
        assert np.array_equal(np.asarray(mine), np.asarray(views.image(pil, 1, index)))
        applied += len(ops)
    assert applied >= 12  # most draws apply one or two operations


def test_a_batch_equals_its_samples_one_by_one_and_stays_close_to_pil() -> None:
    batched, images = BatchedAutoAugment(), _images(32)
    draws = [batched.draw(view_seed(0, 2, i, 0), 48, 48) for i in range(len(images))]
    out = batched(images, draws)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert not torch.equal(out, images)
    for i in range(len(images)):  # batching does not mix samples up
        assert torch.equal(out[i : i + 1], batched(images[i : i + 1], draws[i : i + 1]))
    views = ViewMaker(frozenset({"image_aug"}), seed=0)
    diffs = []
    for i, image in enumerate(images):  # tensor kernels against PIL ones: same operation, other rounding
        pil = views.image(Image.fromarray(image.permute(1, 2, 0).numpy()), 2, i)
        diffs.append(np.abs(np.asarray(pil, dtype=float) - out[i].permute(1, 2, 0).numpy()).mean())
    assert max(diffs) <= 2.0, diffs  # the data path's tolerance (1.2/255 at most over 200 samples)
