"""Loggers as loop hooks: TensorBoard and W&B get what metrics.jsonl gets, read back with each tool's own code."""

from __future__ import annotations

import json
import struct
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wandb
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from wandb.proto.wandb_internal_pb2 import Record

from clipbackdoor.config import WandbConfig
from clipbackdoor.metrics_log import MetricsLog
from clipbackdoor.resolve import load_config
from clipbackdoor.train.loggers import TensorBoardLogger, WandbLogger
from clipbackdoor.train.loop import fit

from .conftest import tiny_overrides


def _events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def fit_killed_mid_epoch_three(cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``fit(cfg)`` and kill it at a step of epoch 3: after epoch 2's checkpoint, with records past it
    already given to the loggers, as a crash would."""
    real_append = MetricsLog.append

    def crash_mid_epoch_three(self, record):
        real_append(self, record)
        if record["kind"] == "step" and record["epoch"] == 3:
            raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(MetricsLog, "append", crash_mid_epoch_three)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg)


def test_tensorboard_holds_the_records_of_metrics_jsonl_and_a_resume_repeats_no_step(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config("demo", tiny_overrides(fmnist_root, tmp_path, **{"train.epochs": 3, "log.tensorboard": True}))
    fit_killed_mid_epoch_three(cfg, monkeypatch)
    assert max(e.step for e in _events(cfg.run_dir).Scalars("train/loss")) == 10  # logged past the checkpoint
    fit(cfg)  # resumed from epoch 2: the same event files continue, step 10 purged and logged again
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    events = _events(cfg.run_dir)
    tags = events.Tags()["scalars"]
    assert {"train/loss", "lr", "logit_scale", "eval/clean_top1", "time/samples_per_s"} <= set(tags)
    for tag in ("train/loss", "eval/clean_top1"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = [(r["step"], r[tag]) for r in records if tag in r]
        assert [s for s, _ in logged] == [s for s, _ in expected]  # every record once, steps never repeat
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected])
    assert "config/text_summary" in events.Tags()["tensors"]  # the resolved config, as text
    (content,) = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME).values()  # and as hparams
    hparams = hparams_metadata.parse_session_start_info_plugin_data(content).hparams
    assert hparams["train.lr"].number_value == cfg.train.lr
    assert hparams["model.name"].string_value == "tiny-rn"
    assert hparams["log.tensorboard"].bool_value


def test_a_failing_logger_warns_once_and_never_stops_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    logger = TensorBoardLogger(blocker / "tensorboard", {})  # cannot be created under a file
    with pytest.warns(RuntimeWarning, match="TensorBoard logging stopped"):
        logger.on_record({"kind": "step", "step": 1, "train/loss": 1.0})
    logger.on_record({"kind": "step", "step": 2, "train/loss": 1.0})  # silent: it has stopped
    assert logger.failed


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """W&B offline and quiet, its settings, cache and logs under ``tmp_path``; its service ends with the test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    yield
    wandb.teardown()


def _wandb_records(path: Path) -> Iterator[Record]:
    """The records of a ``.wandb`` file, parsed with wandb's own protobuf ``Record``. wandb ships no Python reader
    of the files (wandb-core, a Go program, writes them); the format is a 7-byte header (``:W&B``, magic 0xBEE1,
    version 0) and then a LevelDB log: 32 KiB blocks of chunks, each with a CRC-32 of its type and bytes, its
    length and its type (a full record, or the first, a middle or the last piece of one)."""
    block, full, last = 32768, 1, 4
    data = path.read_bytes()
    assert data[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too short for a chunk header: the block's zero padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc
        pieces += chunk
        pos += 7 + length
        if kind in (full, last):
            yield Record.FromString(pieces)
            pieces = b""


def _wandb_run(path: Path) -> tuple[str, dict[str, Any], list[tuple[int, dict[str, Any]]]]:
    """An offline run file's run id, config and history rows (step, values without W&B's own ``_`` keys)."""
    records = list(_wandb_records(path))
    (run,) = [r.run for r in records if r.HasField("run")]
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    rows = []
    for r in records:
        if r.HasField("history"):
            row = {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            rows.append((row["_step"], {k: v for k, v in row.items() if not k.startswith("_")}))
    assert records[-1].HasField("exit")  # the run was finished
    return run.run_id, config, rows


def test_wandb_holds_the_records_of_metrics_jsonl_once_and_a_resume_continues_its_run(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_wandb: None
) -> None:
    wandb_cfg = "{project: test, mode: offline}"
    cfg = load_config("demo", tiny_overrides(fmnist_root, tmp_path, **{"train.epochs": 3, "log.wandb": wandb_cfg}))
    fit_killed_mid_epoch_three(cfg, monkeypatch)
    wandb.teardown()  # what the killed process's exit does: W&B closes the run's file
    fit(cfg)  # resumed from epoch 2: the same W&B run continues, in a second offline run file

    first, second = (_wandb_run(f) for f in sorted((cfg.run_dir / "wandb").glob("offline-run-*/run-*.wandb")))
    run_id = (cfg.run_dir / "wandb_id").read_text()
    assert first[0] == second[0] == run_id
    assert first[1] == second[1] == cfg.model_dump(mode="json")
    assert first[2][-1][0] == 8  # epoch 2's last step: step 10, logged past the checkpoint, was held back
    rows = first[2] + second[2]
    steps = [step for step, _ in rows]
    assert steps == sorted(set(steps))  # no step twice, none backwards
    by_step: dict[int, dict[str, Any]] = {}  # W&B holds one row per step: the records of a step, merged
    for record in (json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()):
        epoch = record["kind"] == "epoch"  # its loss terms (epoch means) under epoch/, beside the step's
        values = {f"epoch/{k}" if epoch and k.startswith("train/") else k: v for k, v in record.items()}
        for key in ("kind", "step"):
            values.pop(key)
        step = by_step.setdefault(record["step"], {})
        assert all(step[k] == v for k, v in values.items() if k in step)  # no value overwritten
        step.update(values)
    assert rows == list(by_step.items())
    assert any("epoch/train/loss" in v and "train/loss" in v for _, v in rows)  # a step shared, both kept
    assert {"train/loss", "lr", "logit_scale", "eval/clean_top1", "time/samples_per_s"} <= set(rows[-1][1])


def test_a_failing_wandb_logger_warns_once_and_never_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # the package is missing: importing it fails
    logger = WandbLogger(WandbConfig(project="test"), tmp_path, {"name": "run"}, last_epoch=2)
    logger.on_record({"kind": "epoch", "epoch": 1, "step": 4, "train/loss": 1.0})
    with pytest.warns(RuntimeWarning, match="W&B logging stopped"):
        logger.on_checkpoint(1)
    logger.on_record({"kind": "epoch", "epoch": 2, "step": 8, "train/loss": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.on_checkpoint(2)  # silent: it has stopped
    assert logger.failed and len(logger.waiting) == 1  # nor does it keep what comes after
