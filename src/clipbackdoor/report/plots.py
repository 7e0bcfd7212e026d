"""Figures from metrics.jsonl records. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from clipbackdoor.report.tables import format_value
from clipbackdoor.sweep.select import Point

Records = Sequence[dict[str, Any]]


@dataclass
class PlanePanel:
    """What one pre-training objective's panel shows: per defense its points, front and selected model."""

    title: str
    poisoned: Point | None
    points: dict[str, list[Point]] = field(default_factory=dict)
    fronts: dict[str, list[Point]] = field(default_factory=dict)
    best: dict[str, Point | None] = field(default_factory=dict)


def plot_epoch_curves(series: Sequence[tuple[str, Records, str]], path: Path, title: str) -> Path:
    """One line per (label, records, metric key) against epoch, in percent; saved as PNG or SVG."""
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=150)
    for label, records, key in series:
        points = [(r["epoch"], r[key]) for r in records if r.get("kind") == "epoch" and key in r]
        if points:
            xs, ys = zip(*points, strict=True)
            style = "--" if "asr" in key else "-"
            ax.plot(xs, ys, style, marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _panels(count: int) -> tuple[Any, Any]:
    """One row of ``count`` panels sharing the accuracy axis (side by side per pre-training objective)."""
    return plt.subplots(1, count, figsize=(5.0 * count, 4.2), dpi=150, squeeze=False, sharey=True)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _style_plane(ax: Any, title: str, asr_threshold: float | None) -> None:
    if asr_threshold is not None:
        ax.axvline(asr_threshold, color="grey", lw=0.8, ls=":", label=f"ASR = {asr_threshold:g} %")
    ax.set_xlim(-2, 102)
    ax.set_xlabel("attack success rate (%)")
    ax.set_ylabel("clean accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_ca_vs_asr(panels: Sequence[PlanePanel], path: Path, asr_threshold: float | None = 5.0) -> Path:
    """The study's figure: every cleaned (trial, epoch) on the CA–ASR plane, one colour per defense, the
    poisoned model starred and each defense's selected model ringed; one panel per pre-training objective."""
    fig, axes = _panels(len(panels))
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, (defense, points) in enumerate(panel.points.items()):
            color = f"C{i}"
            ax.scatter([p.asr for p in points], [p.ca for p in points], s=12, alpha=0.6, color=color, label=defense)
            best = panel.best.get(defense)
            if best is not None:
                ax.scatter([best.asr], [best.ca], s=90, facecolors="none", edgecolors=color, linewidths=1.5)
        if panel.poisoned is not None:
            ax.scatter([panel.poisoned.asr], [panel.poisoned.ca], marker="*", s=160, color="black", label="poisoned")
        _style_plane(ax, panel.title, asr_threshold)
    return _save(fig, path)


def plot_pareto_fronts(panels: Sequence[PlanePanel], path: Path, asr_threshold: float | None = 5.0) -> Path:
    """Each defense's Pareto front (max CA, min ASR) as a step line; one panel per pre-training objective."""
    fig, axes = _panels(len(panels))
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, (defense, front) in enumerate(panel.fronts.items()):
            if front:
                xs, ys = [p.asr for p in front] + [100.0], [p.ca for p in front] + [front[-1].ca]
                ax.step(xs, ys, where="post", color=f"C{i}", label=defense)
                ax.scatter(xs[:-1], ys[:-1], s=14, color=f"C{i}")
        if panel.poisoned is not None:
            ax.scatter([panel.poisoned.asr], [panel.poisoned.ca], marker="*", s=160, color="black", label="poisoned")
        _style_plane(ax, f"{panel.title}: Pareto fronts", asr_threshold)
    return _save(fig, path)


def plot_trajectories(panels: Sequence[PlanePanel], path: Path, asr_threshold: float | None = 5.0) -> Path:
    """Per-run epoch trajectories: each trial's path from the poisoned model (epoch 0) through its epochs to
    its last (the larger dot); rows are pre-training objectives, columns defenses."""
    defenses = sorted({d for panel in panels for d in panel.points})
    fig, axes = plt.subplots(
        len(panels), len(defenses), figsize=(3.6 * len(defenses), 3.2 * len(panels)), dpi=150, squeeze=False
    )
    for row, panel in zip(axes, panels, strict=True):
        for ax, defense in zip(row, defenses, strict=True):
            by_trial: dict[str | int | None, list[Point]] = {}  # a run directory is a trial in any sweep
            for p in panel.points.get(defense, []):
                by_trial.setdefault(p.run_dir or p.trial, []).append(p)
            for trial_points in by_trial.values():
                path_points = sorted(trial_points, key=lambda p: p.epoch)
                label = ", ".join(f"{k.split('.')[-1]} {format_value(v)}" for k, v in path_points[0].params.items())
                if panel.poisoned is not None:
                    path_points.insert(0, panel.poisoned)
                xs, ys = [p.asr for p in path_points], [p.ca for p in path_points]
                (line,) = ax.plot(xs, ys, lw=0.8, alpha=0.7, marker=".", label=label or None)
                ax.scatter(xs[-1:], ys[-1:], s=25, color=line.get_color())  # where the run ended
            if by_trial and len(by_trial) <= 16:
                ax.legend(fontsize=5, loc="lower left")
            if asr_threshold is not None:
                ax.axvline(asr_threshold, color="grey", lw=0.8, ls=":")
            ax.set_xlim(-2, 102)
            ax.set_title(f"{panel.title} · {defense}", fontsize=9)
            ax.set_xlabel("ASR (%)", fontsize=8)
            ax.set_ylabel("CA (%)", fontsize=8)
            ax.grid(alpha=0.3)
    return _save(fig, path)
