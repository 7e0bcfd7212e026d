"""What a sweep's trials say about it, as the storage records them: its budget, which trials count toward it,
what each cost, when the sweep is done, and the points each cleaning run measured.

A trial's results are its user attributes, written by :func:`record_points` (or :func:`record_reuse`) and read
here, by the report (sweep/select.py, report/) and by a study's progress:

- ``points``: every evaluated epoch of the cleaning run as ``{epoch, ca, asr, ra}`` (epoch 0 = the poisoned
  model); ``ca``, ``asr``, ``ra``: the last epoch's, as columns of optuna-dashboard's trial table;
- ``stopped_at``: the epoch after which the sweep's pruner stopped the run;
- ``reused_from``: the number of an earlier trial with the same parameters whose results it took;
- ``failure``: why the run failed on its own (a lost trial has none: it is retried).

``run_dir``, ``worker``, ``heartbeat`` and ``lost`` are the workers' bookkeeping (sweep/worker.py,
sweep/recovery.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from clipbackdoor.config import ConfigError
from clipbackdoor.metrics_log import read_records
from clipbackdoor.sweep.config import SweepConfig
from clipbackdoor.sweep.space import grid_space

REUSE_LIMIT = 5  # trials per budgeted run, at most, when a sampler keeps proposing evaluated points


def budget(cfg: SweepConfig) -> int:
    """The cleaning runs the sweep makes: its ``trials``, or every point of its grid."""
    if cfg.trials is not None:
        return cfg.trials
    if cfg.sampler != "grid":
        raise ConfigError(f"sweep '{cfg.name}': the {cfg.sampler} sampler needs a 'trials' budget")
    sizes = [len(v) for v in grid_space(cfg.space).values()]
    return math.prod(sizes)


def stopped_early(t: FrozenTrial) -> bool:
    """A cleaning run the sweep's pruner stopped: PRUNED, with the epochs it ran as points (a trial pruned by
    the budget is PRUNED too, but never ran)."""
    return t.state == TrialState.PRUNED and "stopped_at" in t.user_attrs


def counts_toward_budget(t: FrozenTrial) -> bool:
    """Cleaning runs: finished, stopped early, running, or failed on their own. Lost (retried) trials and
    trials that reused an identical earlier trial's results do not count."""
    if "reused_from" in t.user_attrs:
        return False
    return (
        t.state in (TrialState.COMPLETE, TrialState.RUNNING)
        or stopped_early(t)
        or (t.state == TrialState.FAIL and "failure" in t.user_attrs)
    )


def epochs_run(t: FrozenTrial) -> int:
    """The cleaning epochs a trial ran (the cost a sweep counts): its last evaluated epoch; none if reused."""
    points = t.user_attrs.get("points", [])
    return 0 if "reused_from" in t.user_attrs or not points else max(p["epoch"] for p in points)


def sweep_done(study: optuna.Study, cfg: SweepConfig) -> bool:
    """No trial waits for a worker and the budget is met (or the grid exhausted): no new trial is started."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return False
    if cfg.sampler == "grid" and study.sampler.is_exhausted(study):
        return True
    runs = sum(map(counts_toward_budget, trials))
    return runs >= budget(cfg) or len(trials) >= REUSE_LIMIT * budget(cfg)  # a sampler stuck on known points


def completed_with(study: optuna.Study, params: dict[str, Any]) -> FrozenTrial | None:
    """An earlier complete (or early-stopped) trial with exactly these parameters: cleaning is deterministic,
    so its points are what this trial would measure."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.params == params and "points" in t.user_attrs and "reused_from" not in t.user_attrs:
            return t
    return None


def trial_points(run_dir: Path) -> list[dict[str, Any]]:
    """Every evaluated epoch of a cleaning run (epoch 0 = the poisoned model) as CA/ASR/RA points."""
    points = []
    for r in read_records(run_dir / "metrics.jsonl"):
        if r.get("kind") == "epoch" and "eval/clean_top1" in r:
            points.append(
                {
                    "epoch": r["epoch"],
                    "ca": r["eval/clean_top1"],
                    "asr": r.get("eval/asr_top1"),
                    "ra": r.get("eval/ra_top1"),
                }
            )
    return points


def record_points(trial: optuna.Trial, points: list[dict[str, Any]], stopped_at: int | None = None) -> None:
    """Record a cleaning run's points on its trial; ``stopped_at``: the epoch the sweep's pruner stopped it after."""
    if stopped_at is not None:
        trial.set_user_attr("stopped_at", stopped_at)
    trial.set_user_attr("points", points)
    for key in ("ca", "asr", "ra"):  # the last epoch's numbers, as columns of optuna-dashboard's trial table
        trial.set_user_attr(key, points[-1][key])


def record_reuse(trial: optuna.Trial, earlier: FrozenTrial) -> None:
    """Record an earlier trial's results (from :func:`completed_with`) on ``trial``, and where they came from."""
    for key in ("run_dir", "points", "ca", "asr", "ra", "stopped_at"):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    trial.set_user_attr("reused_from", earlier.number)
