import json
from pathlib import Path

from clipbackdoor.cli import main
from clipbackdoor.train.metrics import read_records

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


def test_demo_runs_end_to_end_on_tiny_data(fmnist_root: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "poisoned"
    overrides = [
        *tiny_overrides(fmnist_root, tmp_path / "runs", **{"train.epochs": 1, "name": "d"}),
        f"poison.output={data}", f"poison.source.root={fmnist_root}", "poison.num_poisons=8",
        "poison.cleaning.size=128", f"data.train={{source: csv, path: {data}/train.csv}}",
        f"eval.attack={data}/manifest.json",
    ]  # fmt: skip
    assert main(["demo", *overrides]) == 0
    out = capsys.readouterr().out
    assert "CleanCLIP CA %" in out and "mmcl-ssl" in out
    for run in ("d-mmcl", "d-mmcl-ssl", "d-mmcl-cleanclip", "d-mmcl-ssl-cleanclip"):
        assert (tmp_path / "runs" / run / "checkpoints" / "latest.json").is_file(), run
    assert (tmp_path / "runs" / "d-report" / "pretraining.png").is_file()
