"""The study's "detect, filter, pre-train again" stage, and the filter it applies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError
from clipbackdoor.resolve import load_config
from clipbackdoor.study.config import load_study_config
from clipbackdoor.study.filtering import write_filtered

from .test_study_launch import write_study


def test_the_filter_drops_the_top_scores_and_keeps_every_other_row_as_written(tmp_path: Path) -> None:
    rows = [[f"images/{i}.png", f"caption, with a comma {i}"] for i in range(10)]
    with (tmp_path / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "caption"], *rows])
    scores = {"id": [0, 1, 2, 3, 4, 5, 6, 8, 9], "image_dao": [0.1, 5.0, 0.3, 0.3, 9.0, 0.2, 0.3, 0.0, 0.3]}
    pq.write_table(pa.table(scores), tmp_path / "scores.parquet")  # row 7 has no score: its image is unreadable
    kept = write_filtered(tmp_path / "train.csv", tmp_path / "scores.parquet", "image_dao", 40, tmp_path / "f.csv")
    assert kept["dropped"] == [1, 2, 3, 4]  # 40 % of 9 scored = 4: 9.0, 5.0, then the 0.3 ties by row number
    with (tmp_path / "f.csv").open(newline="") as f:
        assert list(csv.reader(f)) == [["image", "caption"], *(rows[i] for i in (0, 5, 6, 8, 9))]


def test_filter_by_must_name_a_scored_column_and_a_study_model(tmp_path: Path) -> None:
    for by, message in (("image_knn", "name a scored column"), ("text_dao", "needs filter.text")):
        config = write_study(tmp_path / "study.yaml", tmp_path, filter={"by": by, "drop_percent": 5, "text": False})
        with pytest.raises(ConfigError, match=message):
            load_study_config(config)
    config = write_study(tmp_path / "study.yaml", tmp_path, filter={"drop_percent": 5, "pretrain": ["roclip"]})
    with pytest.raises(ConfigError, match=r"filter\.pretrain: \['roclip'\] are not among"):
        load_study_config(config)


@pytest.mark.slow  # ~25 s: keeps `make test` near 8 minutes; the stage's parts are tested above and in test_detect
def test_a_study_detects_filters_and_pretrains_again(fmnist_root: Path, tmp_path: Path, capsys) -> None:
    spec = {"by": "image_slof", "drop_percent": 25, "k": 4, "reference_size": 32,
            "detectors": ["kdist", "slof", "dao", "cosine"]}  # fmt: skip
    config = write_study(tmp_path / "study.yaml", fmnist_root, filter=spec, asr_threshold=100.0)
    assert main(["study", str(config)]) == 0
    root = tmp_path / "tiny-study"
    (entry,) = json.loads((root / "filter" / "filter.json").read_text())
    assert entry["scored"] == 64 and entry["dropped"] == 16 and 0 <= entry["poisons_dropped"] <= 8
    assert set(entry["detection"]) == {f"{m}_{d}" for m in ("image", "text") for d in ("kdist", "slof", "dao")} | {
        "cosine"
    }
    retrained = load_config(root / "pretrain" / "mmcl-filtered" / "config.yaml")
    assert retrained.data.train.path == str(root / "data" / "train-filtered-mmcl.csv")
    with open(retrained.data.train.path, newline="") as f:
        assert sum(1 for _ in f) == 1 + 48
    assert entry["filtered"]["run_dir"] == str(root / "pretrain" / "mmcl-filtered")
    report = (root / "report" / "report.md").read_text()
    assert "## Detect, filter, pre-train again" in report and "## Detection by the poisoned model" in report
    pretrained = report[report.index("## Pre-trained on the poisoned data") :].split("\n## ")[0]
    assert "| MMCL | mmcl | 1 |" in pretrained
    assert "| MMCL |" in report[report.index("## Detection by") :]
    capsys.readouterr()
    assert main(["study", str(config)]) == 0  # resumed: detection and the second pre-training are read back
    out = capsys.readouterr().out
    assert "scored earlier" in out and out.count("finished earlier") == 2


def test_plan_lists_the_filtered_pretraining_last(fmnist_root: Path, tmp_path: Path) -> None:
    from clipbackdoor.study.plan import plan_study

    config = write_study(tmp_path / "study.yaml", fmnist_root, filter={"by": "image_dao", "drop_percent": 25})
    stages = plan_study(load_study_config(config))
    assert [s.name for s in stages][-1] == "detect with mmcl, drop 25 % of the pairs, pre-train mmcl-filtered"
    assert stages[-1].pairs.n == 48 and stages[0].pairs.n == 64
