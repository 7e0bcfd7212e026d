"""The report's table of the study's pre-trained models as they came out of pre-training: clean accuracy,
attack success and robust accuracy after their last epoch. Robust pre-trainings (RoCLIP, SafeCLIP), which
the study does not clean, are compared with the poisoned MMCL / MMCL+SSL models and the cleaned ones here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clipbackdoor.config import ConfigError, read_yaml
from clipbackdoor.metrics_log import read_records
from clipbackdoor.report.tables import Table


def pretraining_table(runs: list[Path], label: Callable[[dict], str]) -> Table:
    """One row per pre-training run: its objective (``label`` of the run's ``objective``), run directory,
    last epoch and CA / ASR / RA % there."""
    rows = []
    for run in runs:
        epochs = [r for r in read_records(run / "metrics.jsonl") if r.get("kind") == "epoch"]
        if not epochs:
            raise ConfigError(f"{run}/metrics.jsonl holds no epoch record")
        last = epochs[-1]
        ra = last.get("eval/ra_top1")
        rows.append([
            label(read_yaml(run / "config.yaml").get("objective", {})), run.name, str(last["epoch"]),
            f"{last['eval/clean_top1']:.2f}", f"{last['eval/asr_top1']:.2f}", "-" if ra is None else f"{ra:.2f}",
        ])  # fmt: skip
    return Table(["pre-training", "run", "epoch", "CA %", "ASR %", "RA %"], rows)
