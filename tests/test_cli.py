import json
from pathlib import Path

import pytest

from clipbackdoor.cli import main
from clipbackdoor.metrics_log import read_records

from .conftest import tiny_overrides


def test_one_epoch_pretrain_then_evaluate(fmnist_root: Path, tmp_path: Path, capsys) -> None:
    overrides = tiny_overrides(fmnist_root, tmp_path / "runs", **{"train.epochs": 1, "name": "cli"})
    assert main(["pretrain", "demo", *overrides]) == 0
    run = tmp_path / "runs" / "cli"
    epochs = [r for r in read_records(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert "top-1 %" in capsys.readouterr().out

    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["epoch"] == 1 and record["model"] == "tiny-rn"
    assert record["eval/clean_top1"] == epochs[-1]["eval/clean_top1"]
    assert record["eval/n"] == 40


def test_config_errors_exit_with_status_2(capsys) -> None:
    assert main(["pretrain", "demo", "train.lrr=1"]) == 2
    assert "train.lrr" in capsys.readouterr().err


def test_poison_then_pretrain_records_asr_every_epoch(fmnist_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "poisoned"
    overrides = [
        *tiny_overrides(fmnist_root, tmp_path / "runs", **{"train.epochs": 1, "name": "p"}),
        f"poison.output={data}",
        f"poison.source.root={fmnist_root}",
        "poison.num_poisons=8",
        "poison.cleaning.size=20",
        f"data.train={{source: csv, path: {data}/train.csv}}",
        f"eval.attack={data}/manifest.json",
    ]
    assert main(["poison", "demo", *overrides]) == 0
    assert (data / "manifest.json").is_file() and (data / "cleaning.csv").is_file()
    assert main(["pretrain", "demo", *overrides]) == 0
    epochs = [r for r in read_records(tmp_path / "runs" / "p" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for r in epochs:
        assert r["eval/n_triggered"] == 36  # 40 eval images, 4 of them of the target class "bag"
        assert 0 <= r["eval/asr_top1"] <= 100 and 0 <= r["eval/ra_top1"] <= 100


def test_demo_command_starts_the_demo_study(tmp_path: Path, monkeypatch) -> None:
    """`clipbackdoor demo`, the README's first command, reaches the study runner with the demo study (the whole
    run is the slow test below; this one is CI's guard on the command itself)."""
    import clipbackdoor.study.run

    seen = {}

    def fake_run_study(cfg, command=None, log=print, only=None):
        seen.update(name=cfg.name, only=only, command=command)
        (tmp_path / "report.md").write_text("# report\n")
        return tmp_path / "report.md"

    monkeypatch.setattr(clipbackdoor.study.run, "run_study", fake_run_study)
    assert main(["demo", f"output_dir={tmp_path}"]) == 0
    assert seen["name"] == "demo" and seen["only"] is None and seen["command"].startswith("clipbackdoor demo")


@pytest.mark.slow  # CI: the rehearsal runs a study end to end, test_study_launch and test_study_seeds its resumption
def test_demo_study_runs_every_stage_on_tiny_data_and_resumes(fmnist_root: Path, tmp_path: Path, capsys) -> None:
    base = dict(o.split("=", 1) for o in tiny_overrides(fmnist_root, tmp_path, **{"train.epochs": 1}))
    for key in ("name", "output_dir", "data.train", "eval.attack"):  # the study sets these itself
        del base[key]
    base.update({"poison.source.root": str(fmnist_root), "poison.num_poisons": "48", "poison.cleaning": "{size: 64}"})
    study = [
        f"output_dir={tmp_path}",
        "workers=2",  # the four one-trial sweeps, two at a time
        "overrides={" + ", ".join(f"'{k}': {v}" for k, v in base.items()) + "}",
        "defenses.cleanclip.space.train\\.lr.grid=[3.0e-3]",
        "defenses.cleanclip.overrides={train.epochs: 1, train.batch_size: 16, train.warmup_steps: 1}",
        "defenses.mmcl-only.overrides={train.epochs: 1, train.batch_size: 16, train.warmup_steps: 1}",
        "defenses.mmcl-only.space.train\\.lr.grid=[1.0e-3]",
    ]
    assert main(["demo", *study]) == 0
    out = capsys.readouterr().out
    assert "| MMCL | " in out and "| MMCL+SSL | " in out  # the best-cleaned table, one row per objective
    root = tmp_path / "demo"
    for run in ("mmcl", "mmcl-ssl"):
        assert (root / "pretrain" / run / "checkpoints" / "latest.json").is_file(), run
    sweeps = sorted(p.name for p in (root / "sweeps").iterdir())
    assert sweeps == ["mmcl--cleanclip", "mmcl--mmcl-only", "mmcl-ssl--cleanclip", "mmcl-ssl--mmcl-only"]
    trials = sorted((root / "sweeps").glob("*/trials/trial-*/metrics.jsonl"))
    assert len(trials) == 2 * (1 + 1)
    assert (root / "report" / "report.html").is_file() and (root / "report" / "figures" / "ca_vs_asr.png").is_file()
    stamps = [t.stat().st_mtime for t in trials]
    assert json.loads((root / "progress.json").read_text())["stage"] == "done"
    assert main(["demo", *study]) == 0  # resumed: every stage is found finished, no trial runs again
    assert [t.stat().st_mtime for t in trials] == stamps
