"""Figures from metrics.jsonl records. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

Records = Sequence[dict[str, Any]]


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
