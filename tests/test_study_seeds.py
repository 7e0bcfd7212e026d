"""The study's seeds axis: every other seed re-runs each pre-training and the selected cleaning setting only."""

import json
from pathlib import Path

import pytest

from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError
from clipbackdoor.report.seeds import spread
from clipbackdoor.resolve import load_config
from clipbackdoor.study.config import load_study_config, only_pretrainings
from clipbackdoor.study.plan import plan_study

from .test_study_launch import write_study


def test_spread_is_mean_and_sample_standard_deviation() -> None:
    assert spread([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert spread([4.0]) == "4.00"


def test_only_keeps_the_named_pretrainings_and_their_seeds_and_nothing_after() -> None:
    cfg = only_pretrainings(load_study_config("configs/study-fmnist.yaml"), ["roclip", "safeclip"])
    assert list(cfg.pretrain) == ["roclip", "safeclip"] and cfg.defenses == {} and cfg.filter is None
    assert cfg.seeded_pretrain == ["roclip", "safeclip"] and cfg.seeds is not None and cfg.seeds.defenses == []
    names = [s.name for s in plan_study(cfg)]
    seeded = [f"pre-train {tag}-seed{seed}" for tag in ("roclip", "safeclip") for seed in (1, 2)]
    assert names == ["pre-train roclip", "pre-train safeclip", *seeded]
    with pytest.raises(ConfigError, match=r"--only \['nope'\] are not among"):
        only_pretrainings(cfg, ["nope"])


def test_seed_defenses_must_be_the_study_s(tmp_path: Path) -> None:
    config = write_study(tmp_path / "study.yaml", tmp_path, seeds={"values": [0, 1], "defenses": ["cleanclip"]})
    with pytest.raises(ConfigError, match=r"seeds\.defenses: \['cleanclip'\] are not among"):
        load_study_config(config)


def test_other_seeds_rerun_pretraining_and_the_selected_setting(fmnist_root: Path, tmp_path: Path, capsys) -> None:
    seeds = {"values": [0, 1], "defenses": ["mmcl-only"]}
    config = write_study(tmp_path / "study.yaml", fmnist_root, seeds=seeds, asr_threshold=100.0)
    assert main(["study", str(config)]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "tiny-study"
    progress = json.loads((root / "progress.json").read_text())  # written as it ran: last, all of it done
    assert progress["stage"] == "done" and progress["eta_s"] == 0 and progress["poisoned"] and progress["reported"]
    assert [(s["name"], s["done"], s["total"]) for s in progress["stages"]][-2:] == [
        ("pre-train mmcl-seed1", 4, 4), ("clean mmcl--mmcl-only, its selected setting at seeds [1]", 1, 1)]  # fmt: skip
    assert all(s["finished"] and s["seconds_per_unit"] > 0 for s in progress["stages"])
    assert "[progress] pre-train 1 of 2: pre-train mmcl;" in out and "[progress] done;" in out
    seeded = load_config(root / "pretrain" / "mmcl-seed1" / "config.yaml")
    assert seeded.seed == 1 and load_config(root / "pretrain" / "mmcl" / "config.yaml").seed == 0
    runs = json.loads((root / "seeds" / "seeds.json").read_text())
    assert [(r["model"], r["seed"]) for r in runs] == [
        ("poisoned model", 0), ("poisoned model", 1), ("mmcl-only", 0), ("mmcl-only", 1)
    ]  # fmt: skip
    base, other = runs[2], runs[3]
    assert base["run_dir"].startswith(str(root / "sweeps")) and other["run_dir"].startswith(str(root / "seeds"))
    assert base["setting"] == other["setting"] == f"train.lr=0.001, epoch {base['epoch']}"
    trial = load_config(Path(other["run_dir"]) / "config.yaml")
    assert trial.seed == 1 and trial.train.lr == 1e-3
    assert str(root / "pretrain" / "mmcl-seed1") in trial.model.checkpoint
    report = (root / "report" / "report.md").read_text()
    pretrained = report[report.index("## Pre-trained on the poisoned data") :].split("\n## ")[0]
    assert "| MMCL | mmcl | 1 |" in pretrained  # every pre-trained model before cleaning
    section = report[report.index("## Spread over training seeds") :].split("\n## ")[0]
    assert "| MMCL | poisoned model | - | 2 |" in section and "| MMCL | mmcl-only | train.lr=0.001" in section
    rows = [line for line in section.splitlines() if line.startswith("| MMCL |")]
    assert len(rows) == 2 and all(row.count(" ± ") == 2 for row in rows)  # CA and ASR, mean ± spread
    # resumed, nothing runs again, and `report` rebuilds the same table from the study's files
    capsys.readouterr()
    assert main(["study", str(config)]) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert json.loads((root / "progress.json").read_text())["started"] == progress["started"]  # since the first start
    assert main(["status", str(root)]) == 0  # from another shell: read from the study's files and storage
    status = capsys.readouterr().out
    assert status.startswith("study tiny-study: done\n") and "[x] pre-train mmcl-seed1: 4 of 4 steps" in status
    assert main(["report", str(root), "--out", str(tmp_path / "again")]) == 0
    again = (tmp_path / "again" / "report.md").read_text()
    assert again[again.index("## Spread over training seeds") :].split("\n## ")[0] == section
    assert again[again.index("## Pre-trained on the poisoned data") :].split("\n## ")[0] == pretrained


def test_plan_lists_the_seed_stages_in_the_order_the_study_runs_them(fmnist_root: Path, tmp_path: Path) -> None:
    from clipbackdoor.study.plan import plan_study

    config = write_study(tmp_path / "study.yaml", fmnist_root, seeds={"values": [0, 1, 2]})
    names = [stage.name for stage in plan_study(load_study_config(config))]
    assert names == [
        "pre-train mmcl", "clean mmcl--mmcl-only", "pre-train mmcl-seed1", "pre-train mmcl-seed2",
        "clean mmcl--mmcl-only, its selected setting at seeds [1, 2]",
    ]  # fmt: skip
    assert plan_study(load_study_config(config))[-1].runs == 2


def test_robust_pretrainings_are_not_cleaned_and_seeds_take_a_subset(fmnist_root: Path, tmp_path: Path) -> None:
    from clipbackdoor.study.plan import plan_study

    robust = {"mmcl": {"overrides": {"objective": {"mmcl": 1.0}}},
              "roclip": {"overrides": {"objective": {"roclip": 1.0}}, "clean": False}}  # fmt: skip
    config = write_study(tmp_path / "study.yaml", fmnist_root, pretrain=robust,
                         seeds={"values": [0, 1], "pretrain": ["mmcl"]})  # fmt: skip
    names = [stage.name for stage in plan_study(load_study_config(config))]
    assert names == [
        "pre-train mmcl", "pre-train roclip", "clean mmcl--mmcl-only", "pre-train mmcl-seed1",
        "clean mmcl--mmcl-only, its selected setting at seeds [1]",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r"seeds\.pretrain: \['safeclip'\] are not among"):
        load_study_config(
            write_study(tmp_path / "bad.yaml", fmnist_root, seeds={"values": [0, 1], "pretrain": ["safeclip"]})
        )
