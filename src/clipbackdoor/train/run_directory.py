"""A run directory belongs to one config: resuming it with another would mix two experiments in one
metrics.jsonl and one line of checkpoints (``fit`` and a study's pre-trainings check before they start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipbackdoor.config import ConfigError, ExperimentConfig, read_yaml


def check_same_config(cfg: ExperimentConfig, path: Path) -> None:
    """A run directory belongs to one config: resuming with another one would mix two experiments."""
    if not path.is_file():
        return
    old = ExperimentConfig.model_validate(read_yaml(path)).model_dump(mode="json")
    new = cfg.model_dump(mode="json")
    for tree in (old, new):
        tree["train"].pop("progress")  # cosmetic; may differ between the two invocations
    if old != new:
        diff = sorted(_diff_keys(old, new))
        raise ConfigError(f"{path} holds a different config (keys {diff}); use another name or output_dir")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in keys for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]
