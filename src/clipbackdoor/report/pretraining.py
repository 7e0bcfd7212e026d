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


def safe_set_table(runs: list[Path]) -> Table | None:
    """SafeCLIP's own diagnostic, per split epoch of every run that made splits (its seeds' runs, the
    ``<run>-seed<n>`` beside it, included): the shares of the manifest's poisons and of the clean pairs that
    the split kept in the safe set. The method works when the first is far below the second. None when no run
    split its data."""
    rows = []
    for run in [r for base in runs for r in (base, *sorted(base.parent.glob(f"{base.name}-seed*")))]:
        for record in read_records(run / "metrics.jsonl"):
            if record.get("kind") == "epoch" and "safeclip/poison_safe_share" in record:
                shares = ("safe_share", "poison_safe_share", "clean_safe_share")
                rows.append([run.name, str(record["epoch"]), *(f"{100 * record[f'safeclip/{s}']:.2f}" for s in shares)])
    header = ["run", "epoch", "safe set, % of pairs", "poisons in it, % of poisons", "clean pairs in it, % of clean"]
    return Table(header, rows) if rows else None
