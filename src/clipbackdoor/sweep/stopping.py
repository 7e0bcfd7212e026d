"""Early stopping of cleaning runs inside a sweep, by Optuna's own pruners.

Most of a study's cost is cleaning runs that never had a chance: a learning rate so low that ASR stays at
99 %, or so high that CA collapses in the first epoch. The study selects by one rule, the highest CA among
the (run, epoch) points with ASR <= the threshold, so every epoch of a run can be scored as it comes, by
the value that rule ranks:

    value(CA, ASR) = CA       if ASR <= threshold
                   = -ASR     otherwise (below every eligible point; among the others, the lower ASR the better)

and a run's value after epoch e is the best value of its epochs 1..e (selection may take any epoch).

Optuna's pruners (``trial.report`` / ``trial.should_prune``) work only in single-objective studies. So a
sweep with ``early_stop`` is single-objective on this value, maximised; the CA-ASR Pareto set, the
hypervolume and the selection are still computed from every (run, epoch) point, a stopped run's included.
Without ``early_stop`` a sweep stays two-objective (CA up, ASR down) and runs every trial to its end.

What this can miss: a run that is behind the others after a few epochs but would have become the best in
its last ones. ``benchmarks/bench_sweep.py`` counts how often that happens.

The same :func:`stop_after_epoch` decides in a real sweep (the worker reads each epoch's record from the
trial's metrics.jsonl and terminates the trial's process) and in the benchmark's replay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator

PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}


class EarlyStopSpec(BaseModel):
    """Which Optuna pruner stops cleaning runs, with its own keyword arguments (steps are epochs)."""

    model_config = ConfigDict(extra="forbid")

    pruner: Literal["median", "percentile", "successive_halving", "hyperband"] = "median"
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the pruner's keyword arguments, e.g. {n_startup_trials: 4, n_warmup_steps: 1} (median)",
    )

    @model_validator(mode="after")
    def _options_fit_the_pruner(self) -> EarlyStopSpec:
        self.make_pruner()
        return self

    def make_pruner(self) -> optuna.pruners.BasePruner:
        pruner = PRUNERS[self.pruner]
        try:
            return pruner(**self.options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"options {self.options} do not fit optuna.pruners.{pruner.__name__}: {err}") from None


def selection_value(ca: float, asr: float, asr_threshold: float) -> float:
    """What the study's selection rule ranks: CA when ASR <= threshold, else -ASR (below every eligible)."""
    return ca if asr <= asr_threshold else -asr


def value_so_far(points: Iterable[dict[str, Any]], asr_threshold: float) -> float:
    """A run's value: the best of its cleaned epochs (epoch >= 1; epoch 0 is the poisoned model)."""
    values = [selection_value(p["ca"], p["asr"], asr_threshold) for p in points if p["epoch"] >= 1]
    if not values:
        raise ValueError("no cleaned epoch yet")
    return max(values)


def stop_after_epoch(trial: optuna.Trial, points: list[dict[str, Any]], asr_threshold: float) -> bool:
    """Report the run's value after its last epoch in ``points``; whether the study's pruner stops it now."""
    trial.report(value_so_far(points, asr_threshold), points[-1]["epoch"])
    return trial.should_prune()
