"""Zero-shot results in CLIP_benchmark's JSON result schema, so they sit in the same tables as its runs.

``clip_benchmark eval`` writes ``{dataset, model, pretrained, task, metrics, language}`` per (model, dataset),
with ``metrics`` ``{acc1, acc5, mean_per_class_recall}`` as fractions (0-1). We write the same keys, and add
the backdoor's numbers to ``metrics`` on the same 0-1 scale: ``asr_top1``, ``asr_top5``, ``ra_top1`` (and
``n_triggered``) when the evaluation had an attack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipbackdoor.config import LabelledSource

TASK = "zeroshot_classification"


def dataset_name(source: LabelledSource) -> str:
    """The eval set as CLIP_benchmark names it where it has a name for it, else by its source."""
    if source.source == "imagenet":
        return "imagenet1k" if source.classes is None else "imagenet1k-subset"
    if source.source == "torchvision":
        return source.name.lower()
    if source.source == "fashion-mnist":
        return "fashion_mnist"
    return f"csv/{Path(source.path).stem}"


def clip_benchmark_record(
    result: dict[str, float], source: LabelledSource, model: str, pretrained: str | Path
) -> dict[str, Any]:
    """One zero-shot result of :class:`~clipbackdoor.evaluation.ZeroShotEvaluator` (percentages) as
    CLIP_benchmark's record (fractions)."""
    metrics: dict[str, float] = {
        "acc1": result["clean_top1"] / 100,
        "acc5": result["clean_top5"] / 100,
        "mean_per_class_recall": result["clean_mean_per_class_recall"] / 100,
    }
    for key in ("asr_top1", "asr_top5", "ra_top1"):
        if key in result:
            metrics[key] = result[key] / 100
    if "n_triggered" in result:
        metrics["n_triggered"] = result["n_triggered"]
    return {
        "dataset": dataset_name(source),
        "model": model,
        "pretrained": str(pretrained),
        "task": TASK,
        "metrics": metrics,
        "language": "en",
    }
