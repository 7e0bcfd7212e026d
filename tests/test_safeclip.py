"""SafeCLIP: its phases, the Gaussian-mixture split and the growth of the safe set, the masked losses, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipbackdoor.objectives.safeclip import SafeCLIP, clean_posterior, safe_split
from clipbackdoor.resolve import load_config
from clipbackdoor.train.loop import fit

from .conftest import fit_killed_after_epoch, tiny_overrides


def test_the_mixture_splits_low_similarities_from_high_ones_and_the_safe_set_grows() -> None:
    rng = np.random.default_rng(0)
    similarity = np.concatenate([rng.normal(0.1, 0.02, 30), rng.normal(0.6, 0.02, 70)])
    posterior = clean_posterior(similarity)
    assert (posterior[30:] > 0.99).all() and (posterior[:30] < 0.01).all()
    safe, share = safe_split(posterior, None, 0.9)  # first split: the posterior threshold
    assert share == 0.7 and safe[30:].all() and not safe[:30].any()
    term = SafeCLIP(inmodal_warmup=0, multimodal_warmup=0, grow=0.05, cap=0.8)
    term.split(similarity, seed=0)
    assert term.safe.sum() == 70 and term.ratio == pytest.approx(0.75)
    term.split(similarity, seed=0)  # later splits: the top share by posterior, growing to the cap
    assert term.safe.sum() == 75 and term.ratio == pytest.approx(0.8)
    term.split(similarity, seed=0)
    assert term.safe.sum() == 80 and term.ratio == pytest.approx(0.8)
    ties = safe_split(np.array([0.5, 0.9, 0.5, 0.5]), 0.5, 0.9)[0]
    assert ties.tolist() == [True, True, False, False]  # equal posteriors: the lower index first


def test_safe_pairs_get_the_clip_loss_among_themselves_and_risky_ones_the_in_modal_loss() -> None:
    g = torch.Generator().manual_seed(0)
    f = {k: F.normalize(torch.randn(4, 8, generator=g), dim=-1) for k in ("image", "text", "image_aug", "text_aug")}
    f.update(logit_scale=torch.tensor(5.0), index=torch.tensor([3, 0, 2, 1]))
    term = SafeCLIP(inmodal_warmup=1, multimodal_warmup=1)
    term.safe, term.epoch = torch.tensor([True, False, True, True]), 3  # pairs 0, 2, 3 safe; rows 0, 1, 2
    out = term(f)
    s, safe, risky = 5.0, [0, 1, 2], [3]

    def ce(rows: torch.Tensor, columns: torch.Tensor, keep: list[int]) -> torch.Tensor:
        logits = s * rows[keep] @ columns[keep].T
        return F.cross_entropy(logits, torch.arange(len(keep)), reduction="sum")

    clip = 0.5 * (ce(f["image"], f["text"], safe) + ce(f["text"], f["image"], safe)) / 4
    ssl = 0.5 * (ce(f["image"], f["image_aug"], risky) + ce(f["text"], f["text_aug"], risky)) / 4
    assert out["clip"] == pytest.approx(clip.item()) and out["ssl"] == pytest.approx(ssl.item())
    assert out["loss"] == pytest.approx((clip + ssl).item()) and out["safe"] == 0.75
    term.epoch = 1  # in-modal warm-up: every pair risky
    assert term(f)["clip"] == 0 and term(f)["safe"] == 0
    term.epoch = 2  # multimodal warm-up: the CLIP loss on every pair
    assert term(f)["ssl"] == 0 and term(f)["clip"] == pytest.approx(
        (0.5 * (ce(f["image"], f["text"], [0, 1, 2, 3]) + ce(f["text"], f["image"], [0, 1, 2, 3])) / 4).item()
    )


def test_a_resumed_safeclip_run_equals_an_uninterrupted_one(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terms = "{safeclip: {weight: 1.0, inmodal_warmup: 1, multimodal_warmup: 1, grow: 0.1}}"
    extra = {"train.epochs": 4, "objective": terms}
    whole = load_config("demo", tiny_overrides(fmnist_root, tmp_path / "a", **extra))
    fit(whole)
    resumed = load_config("demo", tiny_overrides(fmnist_root, tmp_path / "b", **extra))
    fit_killed_after_epoch(resumed, 3, monkeypatch)
    fit(resumed)

    def epochs(run: Path) -> list[dict]:
        return [r for r in map(json.loads, (run / "metrics.jsonl").open()) if r["kind"] == "epoch" and r["epoch"]]

    keys = ("train/loss", "train/safeclip/safe", "safeclip/safe_share")
    a, b = epochs(whole.run_dir), epochs(resumed.run_dir)
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    assert [r["train/safeclip/safe"] for r in a][:2] == [0.0, 1.0]  # in-modal, then multimodal warm-up
    assert 0 < a[2]["safeclip/safe_share"] < 1 and a[3]["safeclip/safe_share"] >= a[2]["safeclip/safe_share"]
