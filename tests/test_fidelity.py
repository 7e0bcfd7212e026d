"""Small departures from the reference code, fixed (issue 16 item 7): each test fails on the former code."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch

from clipbackdoor.attacks import build_trigger
from clipbackdoor.augment.text import swap_words
from clipbackdoor.config import ModelConfig
from clipbackdoor.defenses import shrink_perturb
from clipbackdoor.models import create_model


def test_eda_swap_always_exchanges_two_distinct_words() -> None:
    words = ["one", "two", "three", "four", "five"]
    # the reference retries until its indices differ: one swap of 5 distinct words never leaves them in order
    assert all(swap_words(words, 1, random.Random(seed)) != words for seed in range(500))
    swapped = [swap_words(words, 1, random.Random(seed)) for seed in range(2000)]
    pairs = {tuple(i for i, (a, b) in enumerate(zip(s, words, strict=True)) if a != b) for s in swapped}
    assert len(pairs) == 10  # every one of the C(5, 2) pairs of positions is drawn


def test_badnet_random_position_follows_the_reference_range() -> None:
    """The reference draws random.randint(0, W - s - 1): the patch never touches the last row or column."""
    trigger = build_trigger({"name": "badnet", "size": 4, "reference_size": 32, "pattern": "solid"})
    spots = [trigger.positions(32, 4, i)[0] for i in range(3000)]
    rows, cols = {r for r, _ in spots}, {c for _, c in spots}
    assert rows == cols == set(range(28))  # 0 .. 32 - 4 - 1, all of them


def test_shrink_perturb_perturbs_with_a_random_init_not_the_pretrained_weights(monkeypatch) -> None:
    built: list[ModelConfig] = []

    def fake_create_model(cfg: ModelConfig):
        built.append(cfg)
        return create_model(cfg.model_copy(update={"pretrained": None}))

    monkeypatch.setattr(shrink_perturb, "create_model", fake_create_model)
    model = create_model(ModelConfig(name="tiny-rn")).model
    ctx = SimpleNamespace(
        seed=0, bundle=SimpleNamespace(model=model), model_config=ModelConfig(name="tiny-rn", pretrained="openai")
    )
    before = [p.clone() for p in model.parameters()]
    shrink_perturb.ShrinkPerturbHook(0.95, 1e-4).before_training(ctx)
    assert built and built[0].pretrained is None and built[0].checkpoint is None
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
