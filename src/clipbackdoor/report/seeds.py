"""The seeds table of a study report: mean ± spread over training seeds of each model the seeds axis re-ran.

Its input, ``<study>/seeds/seeds.json``, is written by the study (:mod:`clipbackdoor.study.seed_axis`): one entry per
(pre-training, seed, model) with the run directory and the epoch whose evaluation counts.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipbackdoor.config import ConfigError
from clipbackdoor.metrics_log import read_records
from clipbackdoor.report.tables import Table

POISONED = "poisoned model"


@dataclass(frozen=True)
class SeedRun:
    """One model of the seeds axis: a poisoned pre-training, or a defense's selected setting cleaning it."""

    pretrain: str  # the study's tag, e.g. "mmcl-ssl"
    objective: str  # as the paper names it, e.g. "MMCL+SSL"
    model: str  # POISONED, or the defense
    setting: str  # the defense's selected parameters and epoch ("" for the poisoned model)
    seed: int
    run_dir: str
    epoch: int | None  # None: the run's last epoch


def epoch_record(run: SeedRun) -> dict[str, Any]:
    epochs = [r for r in read_records(Path(run.run_dir) / "metrics.jsonl") if r.get("kind") == "epoch"]
    chosen = [r for r in epochs if run.epoch is None or r["epoch"] == run.epoch]
    if not chosen:
        raise ConfigError(f"{run.run_dir}/metrics.jsonl: no evaluation of epoch {run.epoch} (seed {run.seed})")
    return chosen[-1]


def spread(values: list[float]) -> str:
    """``mean ± sample standard deviation`` (n - 1); a single value is shown as it is."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def seed_table(index: Path) -> Table:
    """Mean ± spread of CA and ASR per pre-training (objective, and its study tag where two share an
    objective: RoCLIP and its control) and model, with every seed's own values."""
    runs = [SeedRun(**r) for r in json.loads(index.read_text())]
    groups: dict[tuple[str, str, str, str], list[tuple[int, dict[str, Any]]]] = {}
    for run in runs:
        key = (run.pretrain, run.objective, run.model, run.setting)
        groups.setdefault(key, []).append((run.seed, epoch_record(run)))
    shared = {o for o in {k[1] for k in groups} if len({k[0] for k in groups if k[1] == o}) > 1}
    rows = []
    for (tag, objective, model, setting), found in groups.items():
        if objective in shared:
            objective = f"{objective} ({tag})"
        ca = [record["eval/clean_top1"] for _, record in found]
        asr = [record["eval/asr_top1"] for _, record in found]
        each = "; ".join(f"{seed}: {c:.2f} / {a:.2f}" for (seed, _), c, a in zip(found, ca, asr, strict=True))
        rows.append([objective, model, setting or "-", str(len(found)), spread(ca), spread(asr), each])
    return Table(["pre-training", "model", "setting", "seeds", "CA %", "ASR %", "each seed: CA / ASR"], rows)
