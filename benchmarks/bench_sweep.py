"""Sweep efficiency counted in cleaning epochs: samplers with and without early stopping against the grid.

The cleaning problem is real: CleanCLIP cleaning of the demo's poisoned models (run `make demo` first), on
1000 clean pairs for 6 epochs, evaluated after every epoch on 2000 test images, over a grid of learning rate
x SSL weight. Each full grid is run once with `clipbackdoor sweep` (resumable; cached under --work). The
samplers are then replayed on that table: a trial at a grid point sees exactly the epochs the real run gave
(cleaning on CPU is deterministic), so each sampler runs with many seeds at no extra cost. Samplers are made
by the sweep's own `make_sampler` (its defaults); as before, they search the grid's values as ordered indices
(a real sweep with `low`/`high` ranges draws from the whole range), one trial at a time (with many workers,
a pruner has fewer complete runs to compare with early on).

- random, tpe, nsga2: the two-objective sweep (CA up, ASR down); every run goes to its last epoch.
- tpe+stop, random+stop: the sweep with `early_stop` (sweep/stopping.py): single-objective on the selection
  value, and after each epoch the replay calls the very function a real sweep's worker calls,
  `stop_after_epoch`, with the same pruner; a stopped run costs the epochs it ran.

Cost is cleaning epochs; a proposal of a point already run reuses its results and costs nothing, as in
`clipbackdoor sweep`. After every run the replay records the Pareto hypervolume of all (run, epoch) points
seen (the share of the CA x ASR box [0, 100] x [0, 100] they dominate) and the best model by the study's
rule (highest CA with ASR <= 5 %), against the full grid's.

Targets (issue 20), on average over the seeds: >= 95 % of the grid's hypervolume and a best model within
1 CA point of the grid's best, at <= 25 % of the grid's epochs. The early-stopping setting is chosen on the
first model (--run) and checked on the second (--check-run, the other pre-training objective). "Missed":
runs that were stopped but whose full run would have been the best of that replay.

    python benchmarks/bench_sweep.py           # writes benchmarks/results/sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_result

from clipbackdoor.sweep import Point, SweepConfig, best_under, hypervolume, run_sweep, sweep_points
from clipbackdoor.sweep.stopping import EarlyStopSpec, stop_after_epoch, value_so_far
from clipbackdoor.sweep.storage import make_sampler
from clipbackdoor.sweep.trials import REUSE_LIMIT

LRS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3]
SSL_WEIGHTS = [0.5, 1.0, 2.0, 4.0]
EPOCHS = 6
ASR_THRESHOLD = 5.0
SHARE = 0.25  # of the grid's epochs: where the targets are judged
# early-stopping settings tried on the first model; the one meeting the targets at the lowest share wins
SETTINGS = {  # steps are epochs from 1: n_warmup_steps 2 spares epoch 1
    "median": EarlyStopSpec(pruner="median", options={"n_startup_trials": 4}),
    "median-from-epoch-2": EarlyStopSpec(pruner="median", options={"n_startup_trials": 4, "n_warmup_steps": 2}),
    "percentile-75": EarlyStopSpec(pruner="percentile", options={"percentile": 75.0, "n_startup_trials": 4}),
    "successive-halving": EarlyStopSpec(
        pruner="successive_halving", options={"min_resource": 1, "reduction_factor": 3}
    ),
}

Table = dict[tuple[float, float], list[Point]]


def grid_table(run: str, work: Path, name: str) -> tuple[Table, float]:
    """Run (or resume) the full grid once; each grid cell's points by epoch, and the trials' total seconds."""
    cfg = SweepConfig(
        name=name,
        run=run,
        defense="cleanclip",
        output_dir=str(work),
        sampler="grid",
        space={
            "train.lr": {"low": LRS[0], "high": LRS[-1], "log": True, "grid": LRS},
            "defense.ssl": {"low": SSL_WEIGHTS[0], "high": SSL_WEIGHTS[-1], "grid": SSL_WEIGHTS},
        },
        overrides={
            "train.epochs": EPOCHS,
            "train.keep_last": 1,
            "data.train.max_samples": 1000,
            "data.eval.max_samples": 2000,
        },
    )
    study = run_sweep(cfg, threads=2)
    points, _ = sweep_points(study)
    table: Table = {}
    for p in sorted(points, key=lambda p: p.epoch):
        table.setdefault((p.params["train.lr"], p.params["defense.ssl"]), []).append(p)
    missing = set(itertools.product(LRS, SSL_WEIGHTS)) - set(table)
    if missing:
        raise SystemExit(f"grid cells without results (failed trials?): {sorted(missing)}")
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials if t.datetime_complete)
    return table, seconds


def _as_records(points: list[Point]) -> list[dict[str, Any]]:
    """Points as a real sweep's worker reads them from metrics.jsonl (epoch 0: the poisoned model, not judged)."""
    return [{"epoch": 0, "ca": 0.0, "asr": 100.0}] + [{"epoch": p.epoch, "ca": p.ca, "asr": p.asr} for p in points]


def replay(sampler: optuna.samplers.BaseSampler, table: Table, stop: EarlyStopSpec | None) -> dict[str, Any]:
    """One sweep on the tabulated problem until it has spent the grid's epochs; after every run, the epochs
    spent, the hypervolume and the best model's CA so far; and the stopped runs that would have been best."""
    budget = len(table) * EPOCHS
    seen: list[Point] = []
    done: dict[tuple[float, float], int] = {}  # cell -> epochs it ran
    curve: list[tuple[int, float, float]] = []  # (epochs spent, hypervolume, best CA or -inf)
    spent = 0

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        nonlocal spent
        key = (
            LRS[trial.suggest_int("lr", 0, len(LRS) - 1)],
            SSL_WEIGHTS[trial.suggest_int("ssl", 0, len(SSL_WEIGHTS) - 1)],
        )
        points = table[key]
        ran = done.get(key)
        if ran is None:  # a new run: judged after each epoch as a real sweep's worker judges it
            ran = EPOCHS
            records = _as_records(points)
            if stop is not None:
                ran = next((e for e in range(1, EPOCHS)
                            if stop_after_epoch(trial, records[: e + 1], ASR_THRESHOLD)), EPOCHS)  # fmt: skip
            done[key] = ran
            spent += ran
            seen.extend(points[:ran])
            best = best_under(seen, ASR_THRESHOLD)
            curve.append((spent, hypervolume(seen), best.ca if best else float("-inf")))
        if ran < EPOCHS:
            raise optuna.TrialPruned()
        if stop is not None:
            return value_so_far(_as_records(points), ASR_THRESHOLD)
        return points[-1].ca, points[-1].asr

    directions = ["maximize"] if stop else ["maximize", "minimize"]
    pruner = stop.make_pruner() if stop else optuna.pruners.NopPruner()
    study = optuna.create_study(directions=directions, sampler=sampler, pruner=pruner)
    while spent < budget and len(done) < len(table) and len(study.trials) < REUSE_LIMIT * len(table):
        study.optimize(objective, n_trials=1)
    final_best = max(value_so_far(_as_records(table[k][:ran]), ASR_THRESHOLD) for k, ran in done.items())
    missed = sum(
        ran < EPOCHS and value_so_far(_as_records(table[k]), ASR_THRESHOLD) > final_best for k, ran in done.items()
    )
    return {"curve": curve, "stopped": sum(ran < EPOCHS for ran in done.values()), "missed": missed}


def at_budget(curve: list[tuple[int, float, float]], epochs: float) -> tuple[float, float]:
    """Hypervolume and best CA after the last run that ended within ``epochs`` (none: 0 and -inf)."""
    within = [c for c in curve if c[0] <= epochs]
    return (within[-1][1], within[-1][2]) if within else (0.0, float("-inf"))


def summarise(replays: list[dict[str, Any]], full_hv: float, best_ca: float, grid_epochs: int) -> dict[str, Any]:
    """Mean over seeds, at 25 % of the grid's epochs and at every budget: hypervolume share, CA gap, and the
    smallest epoch share at which both targets hold on average."""

    def mean_at(epochs: float) -> tuple[float, float]:
        hv, ca = zip(*(at_budget(r["curve"], epochs) for r in replays), strict=True)
        gaps = [best_ca - c if c != float("-inf") else best_ca for c in ca]
        return statistics.fmean(hv) / full_hv, statistics.fmean(gaps)

    def meets(epochs: float) -> bool:
        share, ca_gap = mean_at(epochs)
        return share >= 0.95 and ca_gap <= 1.0

    hv_share, gap = mean_at(SHARE * grid_epochs)
    reached = next((e for e in range(1, grid_epochs + 1) if meets(e)), None)
    stopped = sum(r["stopped"] for r in replays)
    return {
        "hypervolume_share_at_25pct": round(hv_share, 4),
        "best_ca_gap_at_25pct": round(gap, 3),
        "met_at_25pct": hv_share >= 0.95 and gap <= 1.0,
        "epoch_share_to_meet_both": None if reached is None else round(reached / grid_epochs, 4),
        "runs_stopped": stopped,
        "stopped_runs_that_would_have_been_best": sum(r["missed"] for r in replays),
        "seeds_with_a_miss": sum(r["missed"] > 0 for r in replays),
    }


def real_sampler(kind: str) -> Any:
    """A sampler exactly as `clipbackdoor sweep` makes it (its defaults: TPE with 5 startup trials,
    multivariate, constant liar; NSGA-II with a population of 8), under a seed."""

    def make(seed: int) -> optuna.samplers.BaseSampler:
        cfg = SweepConfig(name="replay", run="-", sampler=kind, seed=seed, space={"x": {"low": 0, "high": 1}})
        return make_sampler(cfg)

    return make


def samplers(stop: EarlyStopSpec) -> dict[str, tuple[Any, EarlyStopSpec | None]]:
    grid = {"lr": list(range(len(LRS))), "ssl": list(range(len(SSL_WEIGHTS)))}
    return {
        "grid": (lambda seed: optuna.samplers.GridSampler(grid, seed=seed), None),
        "random": (real_sampler("random"), None),
        "tpe": (real_sampler("tpe"), None),
        "nsga2": (real_sampler("nsga2"), None),
        "tpe+stop": (real_sampler("tpe"), stop),
        "random+stop": (real_sampler("random"), stop),
    }


def evaluate(table: Table, seeds: int, stop: EarlyStopSpec, only: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Every sampler (or ``only`` these), replayed under ``seeds`` seeds, summarised."""
    all_points = [p for points in table.values() for p in points]
    full_hv, best = hypervolume(all_points), best_under(all_points, ASR_THRESHOLD)
    grid_epochs = len(table) * EPOCHS
    out = {}
    for name, (make, spec) in samplers(stop).items():
        if only and name not in only:
            continue
        runs = [replay(make(seed), table, spec) for seed in range(seeds)]
        out[name] = summarise(runs, full_hv, best.ca if best else 0.0, grid_epochs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo/pretrain/mmcl-ssl", help="the poisoned run the setting is tuned on")
    parser.add_argument("--check-run", default="runs/demo/pretrain/mmcl", help="the other objective's poisoned run")
    parser.add_argument("--work", default="runs/bench-sweep", help="where the grids' trials are kept")
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for run in (args.run, args.check_run):
        if not (Path(run) / "config.yaml").is_file():
            raise SystemExit(f"{run} is not a run directory: run `make demo` first (or give --run / --check-run)")

    problems = {}
    for role, run in (("tuned", args.run), ("check", args.check_run)):
        table, seconds = grid_table(run, Path(args.work), f"grid-{EPOCHS}ep-{Path(run).name}")
        all_points = [p for points in table.values() for p in points]
        best = best_under(all_points, ASR_THRESHOLD)
        problems[role] = {
            "table": table,
            "info": {
                "run": run,
                "grid_runs": len(table),
                "grid_epochs": len(table) * EPOCHS,
                "grid_hypervolume": round(hypervolume(all_points), 5),
                "grid_best_ca": None if best is None else best.ca,
                "grid_seconds": round(seconds, 1),
            },
        }

    tuning = {}  # each early-stopping setting with TPE, on the tuned model
    for name, spec in SETTINGS.items():
        tuning[name] = evaluate(problems["tuned"]["table"], args.seeds, spec, only=("tpe+stop",))["tpe+stop"]
    meeting = [n for n, r in tuning.items() if r["epoch_share_to_meet_both"] is not None]
    chosen = min(meeting or tuning, key=lambda n: tuning[n]["epoch_share_to_meet_both"] or 2.0)
    results = {role: evaluate(p["table"], args.seeds, SETTINGS[chosen]) for role, p in problems.items()}
    met = {role: {s: r["met_at_25pct"] for s, r in res.items()} for role, res in results.items()}
    payload = {
        "benchmark": "sweep",
        "machine": machine(),
        "problem": {
            "defense": "cleanclip",
            "grid": {"train.lr": LRS, "defense.ssl": SSL_WEIGHTS},
            "cleaning": f"1000 clean pairs, {EPOCHS} epochs, 2000 eval images after every epoch",
            "cost": "cleaning epochs (a stopped run costs the epochs it ran; a repeated proposal costs none)",
            "seeds": args.seeds,
            "models": {role: p["info"] for role, p in problems.items()},
        },
        "early_stop_settings_tried_with_tpe": {n: {"spec": SETTINGS[n].model_dump(), **r} for n, r in tuning.items()},
        "chosen_setting": {"name": chosen, "spec": SETTINGS[chosen].model_dump()},
        "samplers": results,
        "summary": {
            "target": ">= 0.95 of the grid's hypervolume and best CA within 1 point, at <= 25 % of the grid's "
            "epochs, on average over the seeds",
            "met_at_25pct": met,
            "met": all(met[role]["tpe+stop"] for role in met),
        },
    }
    print(write_result("sweep", payload))
    print(payload["summary"])


if __name__ == "__main__":
    main()
