"""Property-based tests (hypothesis): any valid trigger parameters give in-range, finite, deterministic
images on any image size, with the same pixels through PIL and through a batch; EDA never fails on any
text and keeps its output within the edits it allows."""

import random

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipbackdoor.attacks import build_trigger
from clipbackdoor.attacks.base import to_uint8
from clipbackdoor.augment.text import EDA, clean_words

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
unit = st.floats(0.0, 1.0, allow_nan=False)
seeds = st.integers(0, 2**31 - 1)

triggers = st.one_of(
    st.fixed_dictionaries(
        {
            "name": st.just("badnet"),
            "size": st.integers(1, 64),
            "reference_size": st.integers(8, 256),
            "pattern": st.sampled_from(["noise", "fixed-mean-noise", "solid", "checkerboard"]),
            "location": st.sampled_from(["random", "top-left", "bottom-right", "center", "four-corners"]),
            "color": st.lists(unit, min_size=3, max_size=3),
            "seed": seeds,
        }
    ),
    st.fixed_dictionaries({"name": st.just("blended"), "alpha": unit, "seed": seeds}),
    st.fixed_dictionaries(
        {"name": st.just("sig"), "amplitude": unit, "frequency": st.floats(0.01, 64.0, allow_nan=False)}
    ),
    st.fixed_dictionaries(
        {"name": st.just("wanet"), "k": st.integers(2, 16), "s": st.floats(0.0, 2.0, allow_nan=False), "seed": seeds}
    ),
)


@FAST
@given(spec=triggers, size=st.integers(4, 48), data=st.data())
def test_any_valid_trigger_keeps_images_in_range_and_agrees_across_paths(spec: dict, size: int, data) -> None:
    trigger = build_trigger(spec)
    pixels = data.draw(
        st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).integers(0, 256, (size, size, 3)))
    )
    batch = torch.from_numpy(pixels.astype(np.uint8)).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(2, 1, 1, 1)
    out = trigger.apply(batch, torch.tensor([3, 4]))
    assert out.shape == batch.shape and torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, build_trigger(spec).apply(batch, torch.tensor([3, 4])))  # deterministic
    via_pil = np.array(trigger.apply_pil(Image.fromarray(pixels.astype(np.uint8), mode="RGB"), 4))
    assert torch.equal(torch.from_numpy(via_pil).permute(2, 0, 1), to_uint8(out)[1])


SYNONYMS = {"photo": ("picture",), "bag": ("handbag", "tote bag")}


@FAST
@given(
    caption=st.text(max_size=200),
    seed=seeds,
    rates=st.tuples(unit, unit, unit, unit),
)
def test_eda_never_fails_and_only_makes_its_edits(caption: str, seed: int, rates: tuple) -> None:
    eda = EDA(*rates, synonyms=lambda w: SYNONYMS.get(w, ()))
    out = eda(caption, random.Random(seed))
    assert isinstance(out, str)
    assert out == eda(caption, random.Random(seed))
    words = clean_words(caption)
    if not words:
        assert out == caption
        return
    got = out.split()
    assert got, "a non-empty caption never loses every word"
    allowed = set(words) | {w for s in SYNONYMS.values() for phrase in s for w in phrase.split()}
    assert set(got) <= allowed
    n = max(1, int(max(rates[:3]) * len(words)))
    assert len(got) <= len(words) + 2 * n  # insertions add at most n synonyms of up to two words
