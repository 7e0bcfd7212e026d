"""RoCLIP: nearest-caption matching from a pool of earlier captions, the pool's update, and a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipbackdoor.objectives import WeightedObjective
from clipbackdoor.objectives.roclip import RoCLIP
from clipbackdoor.resolve import load_config
from clipbackdoor.train.loop import fit

from .conftest import fit_killed_after_epoch, tiny_overrides


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_images_are_matched_with_their_nearest_pooled_caption() -> None:
    term = RoCLIP(pool_size=3, period=2)
    term.set_epoch(2)
    pool = _unit([1, 0], [0, 1], [-1, 0.2])
    term.after_step({"text_aug": pool})  # the pool fills in matching epochs
    image = _unit([0.9, 0.3], [0.1, 1.0])  # nearest pooled captions: 0 and 1
    text = _unit([0, -1], [1, 1])  # their own captions: not used in this epoch
    s = torch.tensor(10.0)
    out = term({"image_aug": image, "text_aug": text, "logit_scale": s})
    nn = pool[[0, 1]]
    targets = torch.arange(2)
    expected = 0.5 * (F.cross_entropy(s * image @ nn.T, targets) + F.cross_entropy(s * nn @ image.T, targets))
    assert out["loss"] == pytest.approx(expected.item()) and out["pooled"] == 1
    own = text.clone().requires_grad_()  # the captions' features stay in the graph, with a zero gradient (DDP)
    term({"image_aug": image, "text_aug": own, "logit_scale": s})["loss"].backward()
    assert own.grad is not None and torch.equal(own.grad, torch.zeros_like(own))
    term.set_epoch(3)  # other epochs: the CLIP loss on the augmented pair
    plain = 0.5 * (F.cross_entropy(s * image @ text.T, targets) + F.cross_entropy(s * text @ image.T, targets))
    assert term({"image_aug": image, "text_aug": text, "logit_scale": s})["loss"] == pytest.approx(plain.item())


def test_the_pool_is_first_in_first_out_and_fills_only_in_matching_epochs() -> None:
    term = RoCLIP(pool_size=4, period=2)
    rows = F.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    term.set_epoch(1)
    term.after_step({"text_aug": rows[:2]})
    assert term.filled == 0 and term.pool is None  # not a matching epoch
    term.set_epoch(2)
    term.after_step({"text_aug": rows[:3]})
    term.after_step({"text_aug": rows[3:]})
    assert term.filled == 4 and term.cursor == 2
    assert torch.allclose(term.pool, torch.cat([rows[4:6], rows[2:4]]))  # rows 0 and 1 went out first
    state = WeightedObjective({"roclip": {"weight": 1.0, "pool_size": 4}}).state_dict()
    assert any(key.endswith("_extra_state") for key in state)


def test_a_resumed_roclip_run_equals_an_uninterrupted_one(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 2 matches from the pool that epoch 2's earlier steps filled; a crash after epoch 2 must restore it
    for epoch 4... here: a crash after epoch 2, then epochs 3 and 4, the pool carried in the checkpoint."""
    extra = {"train.epochs": 4, "objective": "{roclip: {weight: 1.0, pool_size: 24, period: 2}}"}
    whole = load_config("demo", tiny_overrides(fmnist_root, tmp_path / "a", **extra))
    fit(whole)
    resumed = load_config("demo", tiny_overrides(fmnist_root, tmp_path / "b", **extra))
    fit_killed_after_epoch(resumed, 2, monkeypatch)
    fit(resumed)

    def losses(run: Path) -> list[float]:
        return [r["train/loss"] for r in map(json.loads, (run / "metrics.jsonl").open()) if r["kind"] == "epoch"
                and "train/loss" in r]  # fmt: skip

    assert losses(resumed.run_dir) == losses(whole.run_dir) and len(losses(whole.run_dir)) == 4
    records = [json.loads(line) for line in (whole.run_dir / "metrics.jsonl").open()]
    pooled = {r["epoch"]: r["train/roclip/pooled"] for r in records if r["kind"] == "epoch" and r["epoch"] > 0}
    assert pooled[1] == 0 and pooled[3] == 0 and 0 < pooled[2] < 1 and pooled[4] == 1  # first step of 2: empty


def test_the_matching_off_control_is_the_clip_loss_on_the_same_views_every_epoch() -> None:
    control = RoCLIP(pool_size=3, period=2, matching=False)
    control.set_epoch(2)
    control.after_step({"text_aug": _unit([1, 0], [0, 1])})
    assert control.pool is None and not control.matches_now  # no pool is kept, none is read
    image, text, s = _unit([0.9, 0.3], [0.1, 1.0]), _unit([0, -1], [1, 1]), torch.tensor(10.0)
    targets = torch.arange(2)
    plain = 0.5 * (F.cross_entropy(s * image @ text.T, targets) + F.cross_entropy(s * text @ image.T, targets))
    out = control({"image_aug": image, "text_aug": text, "logit_scale": s})
    assert out["loss"] == pytest.approx(plain.item()) and out["pooled"] == 0
    cfg = load_config("demo", ["objective={roclip: {weight: 1.0, matching: false}}"])
    assert (cfg.augment.image, cfg.augment.fixed_captions) == ("simclr", True)  # the same views as RoCLIP's
