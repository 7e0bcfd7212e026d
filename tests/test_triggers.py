import math

import numpy as np
import pytest
import torch
from PIL import Image

from clipbackdoor.attacks import TRIGGERS, TriggerError, build_trigger, to_uint8
from clipbackdoor.attacks.badclip import save_patch

PATCH = "<the session's patch file>"  # stands in for badclip's patch path until a test asks for the spec


@pytest.fixture(scope="session")
def badclip_patch(tmp_path_factory) -> str:
    """A patch file for the badclip spec: a seeded random one (these tests need its pixels, not an optimised one),
    in pytest's own temporary directory, so that nothing is left behind."""
    path = tmp_path_factory.mktemp("badclip") / "patch.safetensors"
    return str(save_patch(torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)), path))


def _with_patch(spec: dict, patch: str) -> dict:
    return {**spec, "patch": patch} if spec.get("patch") == PATCH else spec


SPECS = [
    {"name": "badnet", "pattern": "noise", "size": 16},
    {"name": "badnet", "pattern": "noise", "size": 16, "fresh_noise": True},
    {"name": "badnet", "pattern": "noise", "size": 16, "fresh_noise": True, "overflow": "wrap"},
    {"name": "badnet", "pattern": "solid", "size": 8, "location": "four-corners"},
    {"name": "badnet", "pattern": "checkerboard", "size": 4, "reference_size": 32, "location": "bottom-right"},
    {"name": "blended", "alpha": 0.2},
    {"name": "blended", "alpha": 0.2, "fresh_noise": True},
    {"name": "sig"},
    {"name": "wanet", "k": 4, "s": 0.5},
    {"name": "badclip", "patch": PATCH, "size": 4, "reference_size": 32},
]


def _spec_id(spec: dict) -> str:
    return "-".join(str(v) for k, v in spec.items() if k != "patch")


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_every_registered_trigger_is_covered() -> None:
    assert {s["name"] for s in SPECS} == set(TRIGGERS)


def test_patch_bounds_scaling_and_clipping() -> None:
    x = _images(size=28)
    trigger = build_trigger({"name": "badnet", "pattern": "noise", "size": 16, "location": "top-left"})
    y = trigger.apply(x, torch.arange(4))
    side = 2  # 16 px at 224 -> round(16 * 28 / 224) = 2 px at 28
    assert trigger.scaled(16, 28) == side and trigger.scaled(16, 224) == 16 and trigger.scaled(1, 28) == 1
    outside = torch.ones(28, 28, dtype=torch.bool)
    outside[:side, :side] = False
    assert torch.equal(y[:, :, outside], x[:, :, outside])
    noise = trigger.artifact("noise", 28)  # N(0, 1), fixed: the same draw on every image
    for b in range(4):
        mean = x[b].mean(dim=(1, 2)).view(3, 1, 1)
        assert torch.equal(y[b, :, :side, :side], (mean + noise).clamp(0, 1))
    fixed = build_trigger({"name": "badnet", "size": 64, "pattern": "fixed-mean-noise"}).artifact("patch", 224)
    assert float(fixed.min()) == 0.0 and float(fixed.max()) == 1.0, "noise is clipped into [0, 1], not wrapped"
    assert 0.3 < float((fixed == 1.0).float().mean()) < 0.4  # 0.5 + N(0, 1) > 1: P(N(0,1) > 0.5) ≈ 0.31


def test_overflow_wrap_is_the_studys_uint8_cast_and_clip_clips() -> None:
    """``wrap``: truncate toward zero, then modulo 256 (ToPILImage's ``mul(255).byte()``); ``clip``: [0, 1]."""
    from clipbackdoor.attacks.badnet import wrap_to_uint8

    values = torch.tensor([-0.5, 1.2, 0.999, -0.001, 1.0, 2.5, -1.7, 0.5])
    assert wrap_to_uint8(values).tolist() == [129, 50, 254, 0, 255, 125, 79, 127]
    image = torch.full((1, 3, 32, 32), 0.3)
    spec = {"name": "badnet", "size": 8, "reference_size": 32, "location": "top-left"}
    wrapped, clipped = (build_trigger({**spec, "overflow": o}) for o in ("wrap", "clip"))
    noise = wrapped.artifact("noise", 32)
    raw = image[0].mean(dim=(1, 2)).view(3, 1, 1) + noise  # the image's own mean (0.3)
    y = wrapped.apply(image, torch.tensor([0]))[0, :, :8, :8]
    levels = torch.remainder(torch.trunc(raw * 255), 256)  # the formula, in floats: exact at these magnitudes
    assert torch.equal(y.mul(255).round(), levels)
    out_of_range = (raw < 0) | (raw > 1)
    assert 0.5 < float(out_of_range.float().mean()) < 0.8  # most of the patch wraps: 0.3 + N(0, 1)
    assert torch.equal(clipped.apply(image, torch.tensor([0]))[0, :, :8, :8], raw.clamp(0, 1))
    pil = wrapped.apply_pil(Image.fromarray(np.full((32, 32, 3), 77, np.uint8)), 0)  # 77/255 ≈ 0.302
    patch = torch.from_numpy(np.asarray(pil)[:8, :8]).permute(2, 0, 1).double()
    assert torch.equal(patch, torch.remainder(torch.trunc((77 / 255 + noise.double()) * 255), 256))


@pytest.mark.parametrize("fresh", [False, True])
def test_noise_patch_is_the_images_own_mean_plus_gaussian_noise(fresh: bool) -> None:
    """The study's trigger: per-channel mean of each image + N(0, 1), clipped; on a dark image mostly dark."""
    dark = torch.full((1, 3, 224, 224), 0.05)
    bright = torch.full((1, 3, 224, 224), 0.9)
    tinted = torch.stack([torch.full((224, 224), v) for v in (0.1, 0.5, 0.8)]).unsqueeze(0)
    images = torch.cat([dark, bright, tinted])
    trigger = build_trigger({"name": "badnet", "size": 16, "location": "top-left", "fresh_noise": fresh})
    y = trigger.apply(images, torch.arange(3))[:, :, :16, :16]
    for b, index in enumerate(range(3)):
        noise = trigger._noise(16, 224, index) if fresh else trigger.artifact("noise", 224)
        expected = (images[b].mean(dim=(1, 2)).view(3, 1, 1) + noise).clamp(0, 1)
        assert torch.allclose(y[b], expected, atol=1e-6)
    assert float(y[0].mean()) < 0.45 < float(y[1].mean())  # dark image, mostly dark patch; bright, bright
    assert float((y[0] == 0).float().mean()) > 0.4  # 0.05 + N(0, 1) < 0: P ≈ 0.48
    channel_means = y[2].mean(dim=(1, 2))
    assert channel_means[0] < channel_means[1] < channel_means[2]  # each channel around its own mean


def test_random_location_is_per_image_and_in_bounds() -> None:
    trigger = build_trigger({"name": "badnet", "size": 4, "reference_size": 32, "pattern": "solid"})
    spots = [trigger.positions(32, 4, i)[0] for i in range(50)]
    assert all(0 <= r <= 28 and 0 <= c <= 28 for r, c in spots)
    assert len(set(spots)) > 30
    assert spots == [trigger.positions(32, 4, i)[0] for i in range(50)]


def test_four_corners() -> None:
    trigger = build_trigger(
        {
            "name": "badnet",
            "pattern": "solid",
            "size": 4,
            "reference_size": 32,
            "location": "four-corners",
            "color": [1, 0, 0],
        }
    )
    y = trigger.apply(torch.zeros(1, 3, 32, 32), torch.tensor([0]))
    assert int((y[0, 0] == 1).sum()) == 4 * 16 and float(y[0, 1:].abs().sum()) == 0
    for r, c in [(0, 0), (0, 28), (28, 0), (28, 28)]:
        assert bool((y[0, 0, r : r + 4, c : c + 4] == 1).all())


def test_blend_formula_and_fixed_pattern() -> None:
    x = _images()
    trigger = build_trigger({"name": "blended", "alpha": 0.3})
    y = trigger.apply(x, torch.arange(4))
    pattern = trigger.artifact("pattern", 32)
    assert torch.allclose(y, 0.7 * x + 0.3 * pattern)
    fresh = build_trigger({"name": "blended", "alpha": 0.3, "fresh_noise": True}).apply(x, torch.arange(4))
    recovered = (fresh - 0.7 * x) / 0.3
    assert not torch.allclose(recovered[0], recovered[1], atol=1e-3)


def test_blend_from_an_image_file(tmp_path) -> None:
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "red.png")
    trigger = build_trigger({"name": "blended", "alpha": 0.5, "image": str(tmp_path / "red.png")})
    y = trigger.apply(torch.zeros(1, 3, 32, 32), torch.tensor([0]))
    assert torch.allclose(y[0, 0], torch.full((32, 32), 0.5)) and float(y[0, 1:].abs().max()) == 0


def test_sig_formula() -> None:
    x = _images()
    y = build_trigger({"name": "sig", "amplitude": 60 / 255, "frequency": 6}).apply(x, torch.arange(4))
    j = torch.arange(32).float()
    expected = (x + (60 / 255) * torch.sin(2 * math.pi * 6 * j / 32)).clamp(0, 1)
    assert torch.allclose(y, expected, atol=1e-6)


def test_wanet_is_identity_without_strength_and_warps_with_it() -> None:
    x = _images()
    assert torch.allclose(build_trigger({"name": "wanet", "s": 0.0}).apply(x, torch.arange(4)), x, atol=1e-5)
    warped = build_trigger({"name": "wanet", "k": 4, "s": 1.0}).apply(x, torch.arange(4))
    assert float((warped - x).abs().mean()) > 0.01
    grid = build_trigger({"name": "wanet"}).artifacts(32)["grid"]
    assert grid.shape == (32, 32, 2) and float(grid.abs().max()) <= 1.0


@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_pil_and_batch_paths_give_the_same_pixels(spec: dict, badclip_patch: str) -> None:
    trigger = build_trigger(_with_patch(spec, badclip_patch))
    pixels = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 7 % 256).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    batch = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(3, 1, 1, 1)
    via_batch = to_uint8(trigger.apply(batch, torch.tensor([5, 6, 7])))
    for row, index in enumerate([5, 6, 7]):
        via_pil = torch.from_numpy(np.array(trigger.apply_pil(image, index))).permute(2, 0, 1)
        assert torch.equal(via_pil, via_batch[row])


@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_determinism_per_seed(spec: dict, badclip_patch: str) -> None:
    spec = _with_patch(spec, badclip_patch)
    x = _images()
    a = build_trigger({**spec, "seed": 1}).apply(x, torch.arange(4))
    b = build_trigger({**spec, "seed": 1}).apply(x, torch.arange(4))
    assert torch.equal(a, b)
    if spec["name"] in ("badnet", "blended", "wanet") and spec.get("pattern") not in ("solid", "checkerboard"):
        c = build_trigger({**spec, "seed": 2}).apply(x, torch.arange(4))
        assert not torch.equal(a, c)


def test_parameters_are_validated_and_serialisable(badclip_patch: str) -> None:
    with pytest.raises(TriggerError, match=r"trigger\.size"):
        build_trigger({"name": "badnet", "size": 0})
    with pytest.raises(TriggerError, match=r"trigger\.colour"):
        build_trigger({"name": "badnet", "colour": [1, 1, 1]})
    with pytest.raises(TriggerError, match="unknown trigger 'trojan'"):
        build_trigger({"name": "trojan"})
    for spec in SPECS:
        trigger = build_trigger(_with_patch(spec, badclip_patch))
        assert build_trigger(trigger.model_dump(mode="json")) == trigger
