"""Progress of a whole study, read from what its stages leave behind: ``progress.json`` and ``status``.

Nothing here is told by the running study process. Each stage's progress is read where the stage keeps it:
a pre-training's steps in its run directory's ``metrics.jsonl``, a sweep's cleaning runs in its Optuna
storage (journal file or PostgreSQL). So ``clipbackdoor status STUDY_DIR`` gives the same answer from
another shell, or from another machine that shares the study directory or the storage, as the study itself
does when it writes ``<study>/progress.json`` (every ``PROGRESS_EVERY_S`` seconds while it runs).

The plan (``plan.plan_study``) gives each stage's total: steps for a pre-training, runs for a sweep. The ETA
adds each stage's remaining work at its measured rate: a pre-training's seconds per step from its epoch
records (``time/epoch_s``), a sweep's seconds per run from its finished trials (divided by the runs at
once). A stage not yet measured takes the rate measured on its kind of stage so far, else the plan's
estimate from benchmarks/results, else it is left out and the ETA says so.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from clipbackdoor.metrics_log import read_records
from clipbackdoor.study.config import StudyConfig
from clipbackdoor.study.plan import Stage
from clipbackdoor.sweep.storage import open_storage
from clipbackdoor.sweep.trials import counts_toward_budget

PROGRESS_EVERY_S = 30.0


@dataclass
class StageProgress:
    name: str
    unit: str  # "steps" (a pre-training) or "runs" (a sweep's cleaning runs)
    done: int
    total: int | None
    seconds_per_unit: float | None  # measured on this stage; None before its first epoch or run
    at_once: int = 1  # runs in parallel (a sweep's workers)

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total


def _pretraining(stage: Stage, run_dir: Path) -> StageProgress:
    records = read_records(run_dir / "metrics.jsonl")
    done = max((int(r.get("step", 0)) for r in records), default=0)
    epochs = [r for r in records if r.get("kind") == "epoch" and "time/epoch_s" in r]
    seconds = sum(r["time/epoch_s"] for r in epochs)
    trained = epochs[-1]["step"] if epochs else 0
    return StageProgress(stage.name, "steps", done, stage.total_steps, seconds / trained if trained else None)


def _cleaning(stage: Stage, sweeps: tuple[tuple[str, str], ...]) -> StageProgress:
    done, durations = 0, []
    for name, url in sweeps:
        if url.startswith("journal:") and not Path(url.removeprefix("journal:")).is_file():
            continue  # not started: opening the storage would create its file
        try:
            study = optuna.load_study(study_name=name, storage=_storage(url))
        except KeyError:  # a shared storage that does not hold this sweep yet
            continue
        for t in study.get_trials(deepcopy=False):
            if counts_toward_budget(t) and t.state != TrialState.RUNNING:  # finished, stopped early or failed
                done += 1
                if t.datetime_start and t.datetime_complete:
                    durations.append((t.datetime_complete - t.datetime_start).total_seconds())
    rate = sum(durations) / len(durations) if durations else None
    return StageProgress(stage.name, "runs", done, stage.runs, rate, stage.at_once)


@cache
def _storage(url: str) -> Any:
    """One storage per URL for the process's life: a journal is then read incrementally, and a PostgreSQL
    study checked every 30 s does not open a new engine (and its connections) each time."""

    return open_storage(url)


def stage_progress(stage: Stage) -> StageProgress:
    """One planned stage's progress, read where it keeps it (``Stage.where``)."""
    where = stage.where
    if where is None:
        raise ValueError(f"stage {stage.name!r} was not planned as part of a study: no place to read it from")
    if where.run_dir is not None:
        return _pretraining(stage, where.run_dir)
    return _cleaning(stage, where.sweeps)


def _planned_rate(stage: Stage) -> float | None:
    """Seconds per unit from the plan's throughput measurement (training only), if it has one."""
    if stage.throughput is None or stage.total_steps is None:
        return None
    per_step = stage.layout.global_batch / (stage.throughput[0] * stage.processes)
    pretraining = stage.where is not None and stage.where.run_dir is not None
    return per_step if pretraining else per_step * stage.total_steps  # a cleaning run: all its steps


def remaining_seconds(stages: list[Stage], progress: list[StageProgress]) -> tuple[float, list[str]]:
    """Seconds of work left at the measured rates, and the stages whose rate is not known (left out)."""
    measured: dict[str, list[float]] = {}
    for p in progress:
        if p.seconds_per_unit is not None:
            measured.setdefault(p.unit, []).append(p.seconds_per_unit)
    left, unknown = 0.0, []
    for stage, p in zip(stages, progress, strict=True):
        if p.total is None or p.finished:
            continue
        kind = measured.get(p.unit)
        rate = p.seconds_per_unit or (sum(kind) / len(kind) if kind else None) or _planned_rate(stage)
        if rate is None:
            unknown.append(p.name)
            continue
        left += (p.total - p.done) * rate / max(1, p.at_once)
    return left, unknown


def _started(study_dir: Path) -> float:
    """When the study first started (kept in progress.json across resumes); else when its poisoned data was
    written (a study run by a version without progress.json); else now."""
    try:
        return float(json.loads((study_dir / "progress.json").read_text())["started"])
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError):
        manifest = study_dir / "data" / "manifest.json"
        return manifest.stat().st_mtime if manifest.is_file() else time.time()


def study_progress(study: StudyConfig, stages: list[Stage]) -> dict[str, Any]:
    """The study's progress as ``progress.json`` holds it."""
    study_dir = study.study_dir
    progress = [stage_progress(s) for s in stages]
    poisoned = (study_dir / "data" / "manifest.json").is_file()
    report = study_dir / "report" / "report.md"
    reported = report.is_file()
    current = next((i for i, p in enumerate(progress) if not p.finished), None)
    if not poisoned:
        stage = "poison"
    elif current is not None:
        kind = progress[current].unit
        same = [i for i, p in enumerate(progress) if p.unit == kind]
        label = "pre-train" if kind == "steps" else "sweep"
        stage = f"{label} {same.index(current) + 1} of {len(same)}: {progress[current].name}"
    else:
        stage = "report" if not reported else "done"
    left, unknown = remaining_seconds(stages, progress)
    started = _started(study_dir)
    ended = report.stat().st_mtime if stage == "done" else time.time()  # a done study's clock stops at its report
    return {
        "study": study.name,
        "stage": stage,
        "started": started,
        "updated": time.time(),
        "elapsed_s": ended - started,
        "eta_s": left,
        "eta_excludes": unknown,
        "poisoned": poisoned,
        "reported": reported,
        "stages": [asdict(p) | {"finished": p.finished} for p in progress],
    }


def write_progress(study: StudyConfig, stages: list[Stage]) -> dict[str, Any]:
    record = study_progress(study, stages)
    path = study.study_dir / "progress.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)  # a reader never sees half a file
    return record


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def format_progress(record: dict[str, Any]) -> str:
    eta = _hms(record["eta_s"]) + (f" (without {len(record['eta_excludes'])} unmeasured stages)"
                                   if record["eta_excludes"] else "")  # fmt: skip
    lines = [
        f"study {record['study']}: {record['stage']}",
        f"elapsed {_hms(record['elapsed_s'])}, left about {eta} at the measured rates",
        f"  [{'x' if record['poisoned'] else ' '}] poison",
    ]
    for s in record["stages"]:
        mark = "x" if s["finished"] else ">" if s["done"] else " "
        total = "?" if s["total"] is None else f"{s['total']:,}"
        rate = "" if s["seconds_per_unit"] is None else f"  {s['seconds_per_unit']:.3g} s/{s['unit'][:-1]}"
        lines.append(f"  [{mark}] {s['name']}: {s['done']:,} of {total} {s['unit']}{rate}")
    lines.append(f"  [{'x' if record['reported'] else ' '}] report")
    return "\n".join(lines)


class ProgressWriter:
    """Writes progress.json every ``every`` seconds while the study runs and whenever the study logs the start
    of a stage (``log``: a line starting with ``==``), and logs each change of stage."""

    def __init__(self, study: StudyConfig, stages: list[Stage], log: Any = print, every: float = PROGRESS_EVERY_S):
        self.study, self.stages, self.log, self.every = study, stages, log, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.lock = threading.Lock()  # the timer thread and the study's log both update
        self.stage: str | None = None

    def update(self) -> None:
        with self.lock:
            self._update()

    def _update(self) -> None:
        try:
            record = write_progress(self.study, self.stages)
        except Exception as err:  # progress is a view: it must never stop the study
            self.log(f"[progress] not written: {err!r}")
            return
        if record["stage"] != self.stage:
            self.stage = record["stage"]
            self.log(f"[progress] {record['stage']}; elapsed {_hms(record['elapsed_s'])}, "
                     f"left about {_hms(record['eta_s'])}")  # fmt: skip

    def log_stage(self, message: str) -> None:
        """The study's log: passes ``message`` on, then updates at the start of a stage."""
        self.log(message)
        if message.startswith("=="):
            self.update()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.update()

    def __enter__(self) -> ProgressWriter:
        self.update()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.update()
