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
