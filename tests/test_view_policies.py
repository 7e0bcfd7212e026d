"""Views as each objective's reference code makes them: SimCLR-style images for RoCLIP and SafeCLIP (two views for
SafeCLIP), captions drawn once for both, AutoAugment and fresh captions for CleanCLIP's in-modal loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipbackdoor.augment import ViewMaker
from clipbackdoor.augment.simclr import blur_for, simclr_transform
from clipbackdoor.config import AugmentConfig, ConfigError
from clipbackdoor.data.device_decode import DeviceDecode
from clipbackdoor.resolve import load_config

SIMCLR = AugmentConfig(image="simclr", fixed_captions=True, text={"alpha_sr": 0, "alpha_ri": 0})


def _image(side: int) -> Image.Image:
    pixels = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(side))
    return Image.fromarray(pixels.numpy(), mode="RGB")


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


@pytest.mark.parametrize(
    ("terms", "policy"),
    [("{mmcl: 1.0, ssl: 1.0}", ("autoaugment-imagenet", False)), ("{roclip: 1.0}", ("simclr", True)),
     ("{safeclip: 1.0}", ("simclr", True)), ("{mmcl: 1.0}", ("autoaugment-imagenet", False))],
)  # fmt: skip
def test_an_objective_s_views_are_its_reference_s_unless_the_config_says(terms: str, policy: tuple) -> None:
    cfg = load_config("demo", [f"objective={terms}"])
    assert (cfg.augment.image, cfg.augment.fixed_captions) == policy
    mine = load_config("demo", [f"objective={terms}", "augment.image=autoaugment-imagenet"])
    assert mine.augment.image == "autoaugment-imagenet"


def test_simclr_views_are_pure_functions_of_seed_epoch_index_and_view() -> None:
    maker = ViewMaker(frozenset({"image_aug", "image_aug2", "text_aug", "text_aug2"}), seed=0, config=SIMCLR)
    image = _image(32)
    first = _array(maker.image(image, 1, 5, "image_aug"))
    assert first.shape == (32, 32, 3)
    assert np.array_equal(first, _array(maker.image(image, 1, 5, "image_aug")))  # the same draw again
    assert not np.array_equal(first, _array(maker.image(image, 1, 5, "image_aug2")))  # the other view
    assert not np.array_equal(first, _array(maker.image(image, 2, 5, "image_aug")))  # redrawn every epoch
    caption = "a photo of a bag on a dark background at night"
    once = maker.text(caption, 1, 5, "text_aug")
    assert once == maker.text(caption, 9, 5, "text_aug")  # captions drawn once, whatever the epoch
    assert [maker.text(caption, 1, i, "text_aug") for i in range(8)] != [
        maker.text(caption, 1, i, "text_aug2") for i in range(8)
    ]  # two captions per pair, drawn independently


def test_the_blur_scales_with_the_side_as_simclr_scales_it() -> None:
    assert blur_for(224) == (21, (0.1, 2.0))  # the references' kernel and sigma
    kernel, sigma = blur_for(32)
    assert kernel == 3 and sigma == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224))
    names = [type(t).__name__ for t in simclr_transform(224).transforms]
    assert names == ["RandomHorizontalFlip", "RandomResizedCrop", "RandomApply", "RandomGrayscale", "GaussianBlur"]


def test_the_device_decode_path_refuses_views_it_cannot_make() -> None:
    with pytest.raises(ConfigError, match=r"augment.image=simclr .* use data.decode: cpu"):
        DeviceDecode(32, torch.device("cpu"), ViewMaker(frozenset({"image_aug"}), 0, SIMCLR))
    DeviceDecode(32, torch.device("cpu"), ViewMaker(frozenset({"image_aug"}), 0))  # AutoAugment's has one
