"""The study report: the best-cleaned table in the paper's layout, Pareto sets, figures; Markdown + HTML.

Inputs are sweep directories (each names its poisoned run, defense and Optuna storage in sweep.yaml);
the pre-training objective of a sweep is read from its poisoned run's config, so sweeps group into the
paper's rows (MMCL, MMCL+SSL, ...) and columns (defenses) without being told.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

from clipbackdoor.checkpoints import epoch_weights
from clipbackdoor.config import ConfigError, read_yaml
from clipbackdoor.metrics_log import read_records
from clipbackdoor.report.filtering import detection_table, filter_table
from clipbackdoor.report.plots import (
    PlanePanel,
    plot_ca_vs_asr,
    plot_epoch_curves,
    plot_pareto_fronts,
    plot_trajectories,
)
from clipbackdoor.report.pretraining import pretraining_table, safe_set_table
from clipbackdoor.report.seeds import seed_table
from clipbackdoor.report.tables import Table, format_value
from clipbackdoor.sweep.config import load_sweep_config
from clipbackdoor.sweep.select import Point, best_under, hypervolume, pareto_front, sweep_points
from clipbackdoor.sweep.storage import open_storage
from clipbackdoor.sweep.trials import epochs_run, stopped_early


def objective_label(objective: dict) -> str:
    """``{mmcl: 1, ssl: 1}`` -> ``MMCL+SSL``: the pre-training objective as the paper names it."""
    weights = {k: (v["weight"] if isinstance(v, dict) else v) for k, v in objective.items()}
    return "+".join(k.upper() for k, w in weights.items() if w) or "none"


@dataclass
class SweepResult:
    name: str
    pretrain: str
    defense: str
    poisoned_run: Path
    points: list[Point]
    poisoned: Point | None
    runs: int  # cleaning runs completed or stopped early (trials that reused an identical earlier one not counted)
    failed: int  # trials that failed on their own (lost and interrupted ones are retried)
    stopped: int = 0  # runs the sweep's pruner stopped early (counted in runs)
    epochs: int = 0  # cleaning epochs run: the sweep's cost
    device_hours: float = 0.0  # measured: the runs' wall time x devices per run


def load_sweep(sweep_dir: Path) -> SweepResult:
    # where the sweep dir is now, not where it was run: its default journal moved with it
    cfg = load_sweep_config(sweep_dir / "sweep.yaml", [f"output_dir={json.dumps(str(sweep_dir.parent))}"])
    if cfg.storage is None and not cfg.journal.is_file():
        raise ConfigError(f"{sweep_dir}: no {cfg.journal.name} (the sweep never ran, or its storage was elsewhere)")
    try:
        study = optuna.load_study(study_name=cfg.name, storage=open_storage(cfg.storage_url))
    except KeyError:
        raise ConfigError(f"{sweep_dir}: no sweep '{cfg.name}' in {cfg.storage_url}") from None
    points, poisoned = sweep_points(study)
    run_config = Path(cfg.run) / "config.yaml"
    if not run_config.is_file():
        raise ConfigError(f"{sweep_dir}/sweep.yaml: its poisoned run {cfg.run} has no config.yaml")
    trials = [t for t in study.get_trials(deepcopy=False) if "reused_from" not in t.user_attrs]
    ran = [t for t in trials if t.state == TrialState.COMPLETE or stopped_early(t)]
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in ran if t.datetime_complete)
    return SweepResult(
        name=cfg.name,
        pretrain=objective_label(read_yaml(run_config).get("objective", {})),
        defense=Path(cfg.defense).stem,
        poisoned_run=Path(cfg.run),
        points=points,
        poisoned=poisoned,
        runs=len(ran),
        failed=sum(t.state == TrialState.FAIL and "failure" in t.user_attrs for t in trials),
        stopped=sum(map(stopped_early, ran)),
        epochs=sum(map(epochs_run, ran)),
        device_hours=seconds * cfg.devices_per_trial / 3600,
    )


def _label_models(results: list[SweepResult]) -> None:
    """A row per poisoned model, named by its pre-training objective; two models with one objective (two
    studies, two datasets) are told apart by their run directory rather than merged."""
    runs_by_label: dict[str, set[Path]] = {}
    for r in results:
        runs_by_label.setdefault(r.pretrain, set()).add(r.poisoned_run)
    for r in results:
        if len(runs_by_label[r.pretrain]) > 1:
            r.pretrain = f"{r.pretrain} ({r.poisoned_run})"


def _cell(p: Point | None) -> str:
    return "none reached" if p is None else f"{p.ca:.2f} / {p.asr:.2f}"


def format_params(params: dict) -> str:
    """``train.lr=0.001, defense.ssl=1``: a trial's parameters as the report shows them."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in params.items())


def _weights(p: Point) -> str:
    """The selected model's checkpoint, or why there is none (a sweep with train.keep_last keeps the last)."""
    if p.run_dir is not None and (path := epoch_weights(Path(p.run_dir) / "checkpoints", p.epoch)).is_file():
        return str(path)
    return "not kept (train.keep_last)"


def _panels(results: list[SweepResult], asr_threshold: float) -> list[PlanePanel]:
    panels: dict[str, PlanePanel] = {}
    for r in results:
        panel = panels.setdefault(r.pretrain, PlanePanel(r.pretrain, r.poisoned))
        panel.poisoned = panel.poisoned or r.poisoned
        panel.points.setdefault(r.defense, []).extend(r.points)
    for panel in panels.values():
        for defense, points in panel.points.items():
            panel.fronts[defense] = pareto_front(points)
            panel.best[defense] = best_under(points, asr_threshold)
    return list(panels.values())


def _sections(
    results: list[SweepResult],
    panels: list[PlanePanel],
    asr_threshold: float,
    seeds: Path | None,
    filtering: Path | None,
    pretrained: list[Path] | None,
) -> list[tuple[str, Table]]:
    """The report's tables, in the order it shows them: the headline first, then what explains it (detection
    and filtering, the models before cleaning, the selected settings, their spread over seeds), then the detail.
    A section whose input the study did not produce is left out."""
    defenses = list(dict.fromkeys(r.defense for r in results))
    best = Table(
        ["pre-training", "poisoned model", *defenses],
        [[p.title, _cell(p.poisoned), *(_cell(p.best[d]) if d in p.best else "-" for d in defenses)] for p in panels],
    )
    selected = Table(
        ["pre-training", "defense", "CA %", "ASR %", "RA %", "trial", "epoch", "parameters", "weights"],
        [
            [p.title, d, f"{b.ca:.2f}", f"{b.asr:.2f}", "-" if b.ra is None else f"{b.ra:.2f}", str(b.trial),
             str(b.epoch), format_params(b.params), _weights(b)]
            for p in panels for d, b in p.best.items() if b is not None
        ],
    )  # fmt: skip
    fronts = Table(
        ["pre-training", "defense", "Pareto set, CA / ASR (trial:epoch)"],
        [
            [p.title, d, "; ".join(f"{q.ca:.1f} / {q.asr:.1f} ({q.trial}:{q.epoch})" for q in front)]
            for p in panels for d, front in p.fronts.items()
        ],
    )  # fmt: skip
    sweeps = Table(
        ["sweep", "pre-training", "defense", "cleaning runs (stopped early)", "cleaning epochs", "device-hours",
         "failed", "points", "hypervolume"],
        [
            [r.name, r.pretrain, r.defense, f"{r.runs} ({r.stopped})", str(r.epochs), f"{r.device_hours:.2f}",
             str(r.failed), str(len(r.points)), f"{hypervolume(r.points):.3f}"]
            for r in results
        ],
    )  # fmt: skip
    sections: list[tuple[str, Table | None]] = [
        (f"Best cleaned models: CA / ASR % of the highest-CA model with ASR ≤ {asr_threshold:g} %", best),
        ("Detect, filter, pre-train again: the top pairs by a detector's score dropped before pre-training",
         filter_table(filtering) if filtering is not None else None),
        ("Detection by the poisoned model: AUROC / recall at the poison rate of each score",
         detection_table(filtering) if filtering is not None else None),
        *(_pretrained_sections(pretrained) if pretrained else []),
        ("Selected models", selected),
        *([_seeds_section(seeds)] if seeds is not None else []),
        ("Pareto sets", fronts),
        ("Sweeps", sweeps),
    ]  # fmt: skip
    return [(heading, table) for heading, table in sections if table is not None]


def _pretrained_sections(pretrained: list[Path]) -> list[tuple[str, Table | None]]:
    """The pre-trained models' CA / ASR / RA, and SafeCLIP's split diagnostic (None without a split)."""
    return [
        ("Pre-trained on the poisoned data: CA / ASR / RA % after the last epoch, before any cleaning",
         pretraining_table(pretrained, objective_label)),
        ("SafeCLIP's split: the manifest's poisons and clean pairs it kept in the safe set, per split epoch",
         safe_set_table(pretrained)),
    ]  # fmt: skip


def _seeds_section(seeds: Path) -> tuple[str, Table]:
    heading = "Spread over training seeds: CA / ASR % as mean ± standard deviation (the grid ran at the first)"
    return heading, seed_table(seeds)


def _write_points(results: list[SweepResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["pretrain", "defense", "sweep", "trial", "epoch", "ca", "asr", "ra", "params", "run_dir"])
        for r in results:
            for p in [*([r.poisoned] if r.poisoned else []), *r.points]:
                out.writerow([r.pretrain, r.defense, r.name, p.trial, p.epoch, p.ca, p.asr, p.ra,
                              json.dumps(p.params), p.run_dir])  # fmt: skip


def _embed(path: Path) -> str:
    if path.suffix == ".svg":
        return path.read_text()
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def build_report(
    sweep_dirs: list[Path],
    out_dir: Path,
    title: str = "clipbackdoor report",
    asr_threshold: float = 5.0,
    fmt: str = "png",
    command: str | None = None,
    seeds: Path | None = None,
    filtering: Path | None = None,
    pretrained: list[Path] | None = None,
) -> Path:
    """Write report.md, report.html (self-contained), figures/ and points.csv; returns report.md.

    ``seeds``: a study's seeds.json, for the table of mean ± spread over training seeds; ``filtering``: its
    filter.json, for the detection AUROCs and the "detect, filter, pre-train again" results; ``pretrained``: its
    pre-training runs, for their CA / ASR / RA before any cleaning (robust pre-trainings are not cleaned).
    Without sweeps (``study --only``) the report holds the pre-training tables alone."""
    if not sweep_dirs:
        if not pretrained:
            raise ConfigError("no sweeps or pre-trainings to report on")
        sections = [*_pretrained_sections(pretrained), *([_seeds_section(seeds)] if seeds is not None else [])]
        tables = [(h, t) for h, t in sections if t is not None]
        return write_report(out_dir, title, command, tables, {})
    results = [load_sweep(Path(d)) for d in sweep_dirs]
    _label_models(results)
    panels = _panels(results, asr_threshold)
    figures_dir = out_dir / "figures"
    runs = list(dict.fromkeys((r.pretrain, r.poisoned_run) for r in results))
    series = [
        (f"{label}: {name}", read_records(run / "metrics.jsonl"), key)
        for label, run in runs
        for name, key in (("CA", "eval/clean_top1"), ("ASR", "eval/asr_top1"))
    ]
    figures = {
        "CA vs ASR of every cleaned (trial, epoch); ★ poisoned model, ○ selected": plot_ca_vs_asr(
            panels, figures_dir / f"ca_vs_asr.{fmt}", asr_threshold
        ),
        "Pareto fronts": plot_pareto_fronts(panels, figures_dir / f"pareto.{fmt}", asr_threshold),
        "Epoch trajectories of every trial": plot_trajectories(
            panels, figures_dir / f"trajectories.{fmt}", asr_threshold
        ),
        "Pre-training on poisoned data": plot_epoch_curves(
            series, figures_dir / f"pretraining.{fmt}", "pre-training on poisoned data"
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_points(results, out_dir / "points.csv")
    tables = _sections(results, panels, asr_threshold, seeds, filtering, pretrained)
    return write_report(out_dir, title, command, tables, figures, points=True)


def write_report(
    out_dir: Path, title: str, command: str | None, tables: list[tuple[str, Table]], figures: dict[str, Path],
    points: bool = False,
) -> Path:  # fmt: skip
    """report.md and report.html (self-contained: figures embedded) from the tables and figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    made_by = f"Made by `{command}` on {stamp}." if command else f"Made on {stamp}."
    md = [f"# {title}", "", made_by, ""]
    for heading, table in tables:
        md += [f"## {heading}", "", table.markdown(), ""]
    md += ["## Figures", ""] if figures else []
    for caption, path in figures.items():
        md += [f"**{caption}**", "", f"![{caption}]({path.relative_to(out_dir)})", ""]
    md += ["All points: [points.csv](points.csv)."] if points else []
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(made_by)}</p>"]
    body += [f"<h2>{html.escape(h)}</h2>{t.html()}" for h, t in tables]
    body += ["<h2>Figures</h2>"] * bool(figures)
    body += [f"<figure>{_embed(p)}<figcaption>{html.escape(c)}</figcaption></figure>" for c, p in figures.items()]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}img,svg{max-width:100%;height:auto}figure{margin:1.5em 0}"
    )
    (out_dir / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    return out_dir / "report.md"
