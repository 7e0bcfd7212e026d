"""The attack axis and the clean model: a study run once per attack, BadCLIP's patch optimised against the
study's clean model, the fine-tuning threat model, and the attack report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipbackdoor.attacks.poison import choose_poisons
from clipbackdoor.cli import main
from clipbackdoor.config import FashionMNISTPairs
from clipbackdoor.data import build_pair_rows
from clipbackdoor.report.attacks import selected_or_lowest
from clipbackdoor.resolve import load_config
from clipbackdoor.study.attack_axis import attack_study, clean_model_study
from clipbackdoor.study.config import CLEAN_MODEL, load_study_config, pretrain_overrides, stage_overrides
from clipbackdoor.sweep.select import Point

TINY = ("{{'poison.source': {{source: fashion-mnist, root: {root}}}, 'poison.num_poisons': 24, "
        "'poison.cleaning': {{size: 64, poisons: 0}}, 'poison.target': {{name: bag, aliases: [handbag, purse]}}, "
        "'train.epochs': 1, 'train.warmup_steps': 1, 'train.batch_size': 32, 'model.name': micro-rn, "
        "'data.eval': {{source: fashion-mnist, root: {root}, split: test, max_samples: 40}}}}")  # fmt: skip


def test_attack_studies_share_the_clean_model_and_fill_badclip_in(tmp_path: Path) -> None:
    cfg = load_study_config("study-attacks", [f"output_dir={tmp_path}"])
    clean = clean_model_study(cfg)
    args = pretrain_overrides(clean, CLEAN_MODEL)
    assert "seed=1000" in args and "eval.attack=null" in args
    assert any(a.startswith("data.train=") and "fashion-mnist" in a for a in args)
    badclip = attack_study(cfg, "badclip")
    home = tmp_path / "study-attacks" / "attacks" / "badclip"
    assert badclip.study_dir == home and badclip.seeds is not None
    assert badclip.overrides["poison.trigger"]["patch"] == str(home / "trigger" / "patch.safetensors")
    assert badclip.overrides["poison.optimize"] == {
        "epochs": 20, "surrogate": str(tmp_path / "study-attacks" / "pretrain" / CLEAN_MODEL)
    }  # fmt: skip
    assert attack_study(cfg, "badnet").seeds is None  # 3 seeds for BadCLIP's rows only
    finetuned = load_study_config("study-attacks", [f"output_dir={tmp_path}", "finetune={overrides: {train.lr: 1e-6}}"])
    args = pretrain_overrides(attack_study(finetuned, "blended"), "mmcl")
    assert f"model.checkpoint={tmp_path / 'study-attacks' / 'pretrain' / CLEAN_MODEL}" in args
    assert "train.lr=1e-06" in args
    with pytest.raises(ValueError, match="clean_model"):
        load_study_config("study-attacks", ["clean_model=null", "finetune={}"])


def test_every_attack_poisons_the_same_rows_and_so_cleans_on_the_same_set(fmnist_root: Path) -> None:
    """Which rows are poisoned depends on poison.seed, the source and the count, not on the trigger or the
    captions: every attack of study-attacks poisons the same rows (so its cleaning set is the same too)."""
    cfg = load_study_config("study-attacks", [f"overrides={TINY.format(root=fmnist_root)}"])
    rows = build_pair_rows(FashionMNISTPairs(root=str(fmnist_root)), seed=0)
    captions = [rows.caption(i) for i in range(len(rows))]
    chosen = []
    for attack in ("badnet", "blended", "badclip"):
        poison = load_config(cfg.base, stage_overrides(attack_study(cfg, attack))).poison
        chosen.append(choose_poisons(captions, poison))
    assert chosen[0] == chosen[1] == chosen[2] and len(chosen[0]) == 24


def test_a_study_with_an_attack_axis_trains_the_clean_model_optimises_against_it_and_reports(
    fmnist_root: Path, tmp_path: Path
) -> None:
    """One attack (BadCLIP) x MMCL, detection without re-training, not cleaned (CI's time; the defense columns
    and three attacks run in make test-slow): the clean model, the patch optimised against it in the attack's
    directory, the poisoned model, and the attack report, rebuilt the same by ``report``."""
    args = [
        f"output_dir={tmp_path}", f"overrides={TINY.format(root=fmnist_root)}", "workers=1",
        "attacks={badclip: {overrides: {poison.trigger: {name: badclip, size: 4, reference_size: 32},"
        " poison.optimize: {num_pairs: 32, batch_size: 16, epochs: 1}}}}",
        "pretrain={mmcl: {overrides: {objective: {mmcl: 1.0}}, clean: false}}",
        "seeds=null", "filter.pretrain=[mmcl]", "filter.reference_size=128",
    ]  # fmt: skip
    assert main(["study", "study-attacks", *args]) == 0
    root = tmp_path / "study-attacks"
    attack = root / "attacks" / "badclip"
    assert (root / "pretrain" / CLEAN_MODEL / "checkpoints").is_dir()
    assert json.loads((attack / "trigger" / "patch.json").read_text())["settings"]["surrogate"] == str(
        root / "pretrain" / CLEAN_MODEL
    )
    assert json.loads((attack / "data" / "manifest.json").read_text())["trigger"]["name"] == "badclip"
    report = (root / "report" / "report.md").read_text()
    assert "| badclip | MMCL (mmcl) |" in report and (attack / "report" / "report.md").is_file()
    assert "Per-sample detection AUROC per attack" in report and "image_dao" in report
    assert "| badclip | dual (margin 1, weight 500), 1 epochs, 32 pairs, 4 px |" in report  # the patch's diagnostic
    assert main(["report", str(root), "--out", str(tmp_path / "again")]) == 0
    table = report[report.index("| attack") :]
    again = (tmp_path / "again" / "report.md").read_text()
    assert again[again.index("| attack") :] == table


def test_a_defense_that_reaches_no_setting_shows_its_lowest_asr_marked() -> None:
    """The study's rule where a setting reaches ASR <= 5 %; else the lowest-ASR point, marked as such (BadCLIP's
    claim is that cleaning never gets there: the cell must say how far it got, not be empty)."""
    reached = [Point(80.0, 4.0, 1, 0), Point(85.0, 4.9, 2, 0), Point(90.0, 60.0, 1, 1)]
    assert selected_or_lowest(reached, 5.0) == (Point(85.0, 4.9, 2, 0), "")
    failed = [Point(70.0, 89.6, 1, 0), Point(60.0, 35.0, 2, 0), Point(55.0, 35.0, 3, 0)]
    point, note = selected_or_lowest(failed, 5.0)
    assert point == Point(60.0, 35.0, 2, 0) and "none <= 5 %" in note
