"""Figures from metrics.jsonl records. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def plot_epoch_curves(records: Sequence[dict[str, Any]], keys: dict[str, str], path: Path, title: str) -> Path:
    """One line per metric ``key`` (labelled ``keys[key]``) against epoch, saved as PNG or SVG."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=150)
    for key, label in keys.items():
        points = [(r["epoch"], r[key]) for r in records if r.get("kind") == "epoch" and key in r]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
