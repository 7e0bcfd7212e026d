"""Loggers as loop hooks: TensorBoard gets what metrics.jsonl gets, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clipbackdoor.config import load_config
from clipbackdoor.train.loggers import TensorBoardLogger
from clipbackdoor.train.loop import fit
from clipbackdoor.train.metrics import MetricsLog

from .conftest import tiny_overrides


def _events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_holds_the_records_of_metrics_jsonl_and_a_resume_repeats_no_step(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config("demo", tiny_overrides(fmnist_root, tmp_path, **{"train.epochs": 3, "log.tensorboard": True}))
    real_append = MetricsLog.append

    def crash_mid_epoch_three(self, record):  # after epoch 2's checkpoint, a step of epoch 3 already logged
        real_append(self, record)
        if record["kind"] == "step" and record["epoch"] == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(MetricsLog, "append", crash_mid_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.setattr(MetricsLog, "append", real_append)
    assert max(e.step for e in _events(cfg.run_dir).Scalars("train/loss")) == 10  # logged past the checkpoint
    fit(cfg)  # resumed from epoch 2: the same event files continue, step 10 purged and logged again
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").open()]
    events = _events(cfg.run_dir)
    tags = events.Tags()["scalars"]
    assert {"train/loss", "lr", "logit_scale", "eval/clean_top1", "time/samples_per_s"} <= set(tags)
    for tag in ("train/loss", "eval/clean_top1"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = [(r["step"], r[tag]) for r in records if tag in r]
        assert [s for s, _ in logged] == [s for s, _ in expected]  # every record once, steps never repeat
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected])
    assert "config/text_summary" in events.Tags()["tensors"]  # the resolved config, as text


def test_a_failing_logger_warns_once_and_never_stops_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    logger = TensorBoardLogger(blocker / "tensorboard", {})  # cannot be created under a file
    with pytest.warns(RuntimeWarning, match="TensorBoard logging stopped"):
        logger.on_record({"kind": "step", "step": 1, "train/loss": 1.0})
    logger.on_record({"kind": "step", "step": 2, "train/loss": 1.0})  # silent: it has stopped
    assert logger.failed
