"""Sweep efficiency: how much of the grid's Pareto hypervolume TPE and NSGA-II reach, per trial spent.

The cleaning problem is real: CleanCLIP cleaning of the demo's poisoned MMCL+SSL model (run `make demo`
first), on 1000 clean pairs for 2 epochs, evaluated on 2000 test images, over a grid of learning rate x
SSL weight. The full grid is run once with `clipbackdoor sweep` (resumable; cached under --work). Samplers
are then replayed on that table: a trial at a grid point returns exactly the points the real run gave
(cleaning on CPU is deterministic), so each sampler can be run with many seeds at no extra cost. TPE and
NSGA-II search the same grid, as ordered integer indices per parameter. Cost is counted in cleaning runs:
a proposal of a point already run reuses its results, as `clipbackdoor sweep` does.

Hypervolume: the share of the CA x ASR box [0, 100] x [0, 100] dominated by every evaluated (trial, epoch)
point so far (maximise CA, minimise ASR). Summary: the best sampler, the fewest trials (as a share of the
grid) at which its mean hypervolume over seeds reaches 95 % of the full grid's, and the ratio reached then.

    python benchmarks/bench_sweep.py           # writes benchmarks/results/sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_result

from clipbackdoor.sweep import Point, SweepConfig, hypervolume, run_sweep, sweep_points
from clipbackdoor.sweep.runner import REUSE_LIMIT

LRS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3]
SSL_WEIGHTS = [0.5, 1.0, 2.0, 4.0]
TARGET = 0.95


def grid_table(run: str, work: Path) -> tuple[dict[tuple[float, float], list[Point]], float]:
    """Run (or resume) the full grid once; the points each grid cell produced, and the trials' total seconds."""
    cfg = SweepConfig(
        name="bench-grid",
        run=run,
        defense="cleanclip",
        output_dir=str(work),
        sampler="grid",
        space={
            "train.lr": {"low": LRS[0], "high": LRS[-1], "log": True, "grid": LRS},
            "defense.ssl": {"low": SSL_WEIGHTS[0], "high": SSL_WEIGHTS[-1], "grid": SSL_WEIGHTS},
        },
        overrides={
            "train.epochs": 2,
            "train.keep_last": 1,
            "data.train.max_samples": 1000,
            "data.eval.max_samples": 2000,
        },
    )
    study = run_sweep(cfg)
    points, _ = sweep_points(study)
    table: dict[tuple[float, float], list[Point]] = {}
    for p in points:
        table.setdefault((p.params["train.lr"], p.params["defense.ssl"]), []).append(p)
    missing = set(itertools.product(LRS, SSL_WEIGHTS)) - set(table)
    if missing:
        raise SystemExit(f"grid cells without results (failed trials?): {sorted(missing)}")
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials if t.datetime_complete)
    return table, seconds


def replay(sampler: optuna.samplers.BaseSampler, table: dict, runs: int) -> list[float]:
    """Hypervolume after each of ``runs`` cleaning runs chosen by ``sampler`` on the tabulated problem.

    As in `clipbackdoor sweep`, a proposal of an already evaluated point reuses its results and costs no run.
    """
    seen: list[Point] = []
    curve: list[float] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        key = (
            LRS[trial.suggest_int("lr", 0, len(LRS) - 1)],
            SSL_WEIGHTS[trial.suggest_int("ssl", 0, len(SSL_WEIGHTS) - 1)],
        )
        points = table[key]
        if not any(p in seen for p in points):
            seen.extend(points)
            curve.append(hypervolume(seen))
        last = max(points, key=lambda p: p.epoch)
        return last.ca, last.asr

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    while len(curve) < runs and len(study.trials) < REUSE_LIMIT * runs:
        study.optimize(objective, n_trials=1)
    return curve + [curve[-1]] * (runs - len(curve))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo/pretrain/mmcl-ssl", help="the poisoned run to clean")
    parser.add_argument("--work", default="runs/bench-sweep", help="where the grid's trials are kept")
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if not (Path(args.run) / "config.yaml").is_file():
        raise SystemExit(f"{args.run} is not a run directory: run `make demo` first (or give --run)")
    table, grid_seconds = grid_table(args.run, Path(args.work))
    n = len(table)
    full = hypervolume([p for points in table.values() for p in points])
    samplers = {
        "grid": lambda seed: optuna.samplers.GridSampler(
            {"lr": list(range(len(LRS))), "ssl": list(range(len(SSL_WEIGHTS)))}, seed=seed
        ),
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
        "tpe": lambda seed: optuna.samplers.TPESampler(n_startup_trials=4, multivariate=True, seed=seed),
        "nsga2": lambda seed: optuna.samplers.NSGAIISampler(population_size=4, seed=seed),
    }
    curves = {}
    for name, make in samplers.items():
        runs = [replay(make(seed), table, n) for seed in range(args.seeds)]
        mean = [statistics.fmean(r[k] for r in runs) for k in range(n)]
        reached = next((k + 1 for k, hv in enumerate(mean) if hv >= TARGET * full), None)
        curves[name] = {
            "mean_hypervolume_by_runs": [round(v, 5) for v in mean],
            "runs_to_95pct": reached,
            "ratio_at_30pct_runs": round(mean[math.ceil(0.3 * n) - 1] / full, 4),
        }
    best = min(("tpe", "nsga2"), key=lambda s: curves[s]["runs_to_95pct"] or n + 1)
    k = curves[best]["runs_to_95pct"] or n
    summary = {
        "best_sampler": best,
        "hypervolume_ratio": round(curves[best]["mean_hypervolume_by_runs"][k - 1] / full, 4),
        "trial_fraction": round(k / n, 4),
        "hypervolume_ratio_at_0.30": curves[best]["ratio_at_30pct_runs"],
        "target": "hypervolume_ratio >= 0.95 with trial_fraction <= 0.30 (trials = cleaning runs)",
        "met": k / n <= 0.30,
    }
    payload = {
        "machine": machine(),
        "problem": {
            "run": args.run,
            "defense": "cleanclip",
            "grid": {"train.lr": LRS, "defense.ssl": SSL_WEIGHTS},
            "cleaning": "1000 clean pairs, 2 epochs, 2000 eval images; every (trial, epoch) point counts",
            "grid_trials": n,
            "grid_hypervolume": round(full, 5),
            "grid_seconds": round(grid_seconds, 1),
            "seeds": args.seeds,
        },
        "samplers": curves,
        "summary": summary,
    }
    print(write_result("sweep", payload))
    print(summary)


if __name__ == "__main__":
    main()
