"""SafeCLIP as its code trains: the mixture split and its growth, the nearest-neighbour banks, the in-modal and
cross-view losses, the phases' passes and learning rates step by step, the poisons' fate at every split, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipbackdoor.objectives import RunShape
from clipbackdoor.objectives.safeclip import NearestNeighbourBank, SafeCLIP, clean_posterior, safe_split
from clipbackdoor.resolve import load_config
from clipbackdoor.train.loop import fit
from clipbackdoor.train.optim import lr_at

from .conftest import fit_killed_after_epoch, poisoned_run, tiny_overrides


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_the_mixture_splits_low_similarities_from_high_ones_and_the_safe_set_grows() -> None:
    rng = np.random.default_rng(0)
    similarity = np.concatenate([rng.normal(0.1, 0.02, 30), rng.normal(0.6, 0.02, 70)])
    posterior = clean_posterior(similarity)
    assert (posterior[30:] > 0.99).all() and (posterior[:30] < 0.01).all()
    safe, share = safe_split(posterior, None, 0.9)  # first split: the posterior threshold
    assert share == 0.7 and safe[30:].all() and not safe[:30].any()
    term = SafeCLIP(inmodal_warmup=0, multimodal_warmup=0, grow=0.05, cap=0.8)
    term.split(similarity, seed=0)
    assert term.safe.sum() == 70 and term.ratio == pytest.approx(0.75) and term.first_share == 0.7
    term.split(similarity, seed=0)  # later splits: the top share by posterior, growing to the cap
    assert term.safe.sum() == 75 and term.ratio == pytest.approx(0.8)
    term.split(similarity, seed=0)
    assert term.safe.sum() == 80 and term.ratio == pytest.approx(0.8) and term.first_share == 0.7
    ties = safe_split(np.array([0.5, 0.9, 0.5, 0.5]), 0.5, 0.9)[0]
    assert ties.tolist() == [True, True, False, False]  # equal posteriors: the lower index first


def test_the_bank_answers_from_its_rows_before_the_batch_and_fills_first_in_first_out() -> None:
    bank = NearestNeighbourBank(3)
    first = bank.nearest(_unit([1, 0]))
    assert torch.allclose(first.norm(dim=1), torch.ones(1))  # random unit rows before anything is added
    bank.add(_unit([1, 0], [0, 1]))
    assert bank.cursor == 2
    query = _unit([0.9, 0.2], [0.1, 1.0])
    assert torch.equal(bank.nearest(query), _unit([1, 0], [0, 1]))
    bank.add(_unit([-1, 0], [0, -1]))  # overflows: fills the last row, drops the rest, starts over (lightly)
    assert bank.cursor == 0 and torch.equal(bank.rows, _unit([1, 0], [0, 1], [-1, 0]))
    q = _unit([0.5, 0.5]).requires_grad_()
    assert not bank.nearest(q).requires_grad  # a positive without gradient: view 1 learns nothing from it


def test_the_losses_on_a_hand_case() -> None:
    g = torch.Generator().manual_seed(0)
    f = {k: F.normalize(torch.randn(4, 8, generator=g), dim=-1) for k in ("image_aug", "image_aug2", "text_aug",
                                                                         "text_aug2")}  # fmt: skip
    f["logit_scale"] = torch.tensor(5.0)
    s, targets = 5.0, torch.arange(4)
    term = SafeCLIP()
    term.mode = "clip"  # the safe pass and the CLIP warm-up: across views, each direction once (train.py)
    clip = 0.5 * (F.cross_entropy(s * f["image_aug"] @ f["text_aug2"].T, targets)
                  + F.cross_entropy(s * f["text_aug"] @ f["image_aug2"].T, targets))  # fmt: skip
    assert term(f)["loss"] == pytest.approx(clip.item())
    plain = SafeCLIP(memory_bank_size=0)
    plain.mode = "inmodal"  # without banks: view 2 against view 1
    inmodal = 0.5 * (F.cross_entropy(s * f["image_aug2"] @ f["image_aug"].T, targets)
                     + F.cross_entropy(s * f["text_aug2"] @ f["text_aug"].T, targets))  # fmt: skip
    assert plain(f)["loss"] == pytest.approx(inmodal.item())
    banked = SafeCLIP(memory_bank_size=6)
    banked.mode = "inmodal"
    banked.after_step(f)  # the bank now holds these view-1 rows: each view 1's nearest neighbour is itself
    assert banked(f)["loss"] == pytest.approx(inmodal.item())
    banked.after_step({k: torch.flip(v, [0]) if v.dim() else v for k, v in f.items()})  # a second batch
    assert banked.banks["image"].cursor == 0  # 4 + 4 > 6: filled to the end and started over
    banked.mode = "clip"
    before = banked.banks["image"].rows.clone()
    banked.after_step(f)  # CLIP steps leave the banks alone
    assert torch.equal(banked.banks["image"].rows, before)


def test_every_split_reports_the_poisons_it_kept_safe(fmnist_root: Path, tmp_path: Path) -> None:
    term = "{safeclip: {weight: 1.0, inmodal_warmup: 1, multimodal_warmup: 1}}"
    run = poisoned_run(fmnist_root, tmp_path, **{"objective": term, "train.epochs": 3, "train.batch_size": 64})
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if r["kind"] == "epoch"]
    split = epochs[-1]
    assert 0.0 <= split["safeclip/poison_safe_share"] <= 1.0 and 0.0 <= split["safeclip/clean_safe_share"] <= 1.0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    n, poisons = manifest["num_rows"], len(manifest["poison_rows"])  # 48 of 256: the shares weigh to the whole
    whole = (poisons * split["safeclip/poison_safe_share"] + (n - poisons) * split["safeclip/clean_safe_share"]) / n
    assert whole == pytest.approx(split["safeclip/safe_share"])
    assert "safeclip/poison_safe_share" not in epochs[-2]  # no split during the warm-ups


def test_the_split_schedules_are_sized_by_the_first_split() -> None:
    term = SafeCLIP(inmodal_warmup=1, multimodal_warmup=1, grow=0.1, cap=0.5)
    term.first_share = 0.3
    shape = RunShape(epochs=6, pairs=100, steps_for=lambda n: n // 10)
    # split epochs 3..6 keep 30, 40, 50, 50 pairs safe
    assert term.split_steps(shape) == (7 + 6 + 5 + 5, 3 + 4 + 5 + 5)


def test_the_passes_and_the_learning_rate_of_every_step_and_a_resume_that_keeps_them(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 in-modal warm-up epoch, 1 CLIP warm-up epoch at filter_lr, 2 split epochs of a risky and a safe pass;
    64 pairs in global batches of 16: 4 steps per full epoch. A crash after the first split epoch: the banks, the
    split and every pass schedule's count survive it."""
    term = ("{safeclip: {weight: 1.0, inmodal_warmup: 1, multimodal_warmup: 1, grow: 0.25, cap: 0.75, in_lr: 0.01, "
            "cross_lr: 0.02, filter_lr: 0.0003, memory_bank_size: 24}}")  # fmt: skip
    extra = {"train.epochs": 4, "objective": term, "train.log_every": 1, "train.warmup_steps": 2, "train.lr": 9.0}
    cfg = load_config("demo", tiny_overrides(fmnist_root, tmp_path / "a", **extra))
    fit(cfg)
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = {r["epoch"]: r for r in records if r["kind"] == "epoch"}
    by_pass: dict[str, list[float]] = {}
    for r in steps:
        by_pass.setdefault(r["pass"], []).append(r["lr"])
    assert by_pass["inmodal-warmup"] == [lr_at(i, 0.01, 2, 4 * 2) for i in range(4)]  # from in_lr over 2 epochs
    assert by_pass["clip-warmup"] == [0.0003] * 4  # the constant filter_lr
    first = epochs[3]["safeclip/safe_share"]
    safe_counts = [round(64 * first), int(64 * min(first + 0.25, 0.75))]
    risky_total = sum((64 - n) // 16 for n in safe_counts)
    safe_total = sum(n // 16 for n in safe_counts)
    assert by_pass.get("risky", []) == [lr_at(i, 0.01, 2, risky_total) for i in range(risky_total)]
    assert by_pass.get("safe", []) == [lr_at(i, 0.02, 2, safe_total) for i in range(safe_total)]
    for e, n in zip((3, 4), safe_counts, strict=True):
        assert epochs[e]["pass/risky/steps"] + epochs[e]["pass/safe/steps"] == (64 - n) // 16 + n // 16
    assert 9.0 not in by_pass["inmodal-warmup"]  # train.lr is not SafeCLIP's
    assert "train/safeclip/inmodal" in epochs[1] and "train/safeclip/clip" in epochs[2]

    resumed = load_config("demo", tiny_overrides(fmnist_root, tmp_path / "b", **extra))
    fit_killed_after_epoch(resumed, 3, monkeypatch)
    fit(resumed)
    again = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    timing = ("time/epoch_s", "time/samples_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in again] == [
        {k: v for k, v in r.items() if k not in timing} for r in records
    ]


def test_the_report_shows_the_split_diagnostic_of_every_run_and_seed(tmp_path: Path) -> None:
    from clipbackdoor.report.pretraining import safe_set_table

    def run(name: str, records: list[dict]) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return tmp_path / name

    split = {"kind": "epoch", "epoch": 3, "safeclip/safe_share": 0.08, "safeclip/poison_safe_share": 0.0,
             "safeclip/clean_safe_share": 0.083}  # fmt: skip
    mmcl = run("mmcl", [{"kind": "epoch", "epoch": 1}])
    safeclip = run("safeclip", [{"kind": "epoch", "epoch": 2}, split])
    run("safeclip-seed1", [{**split, "safeclip/poison_safe_share": 0.02}])
    table = safe_set_table([mmcl, safeclip])
    assert table is not None and [row[:2] for row in table.rows] == [["safeclip", "3"], ["safeclip-seed1", "3"]]
    assert table.rows[0][2:] == ["8.00", "0.00", "8.30"] and table.rows[1][3] == "2.00"
    assert safe_set_table([mmcl]) is None
