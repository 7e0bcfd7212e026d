"""A run directory belongs to one config: resuming it with another would mix two experiments in one
metrics.jsonl and one line of checkpoints (``fit`` and a study's pre-trainings check before they start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipbackdoor.config import ConfigError, ExperimentConfig, read_yaml
from clipbackdoor.resolve import validate_tree


def check_same_config(cfg: ExperimentConfig, path: Path) -> None:
    """A run directory belongs to one config: resuming with another one would mix two experiments. The saved
    config is read as the current code reads configs, so a parameter added since (a trigger's ``overflow``) is
    at its default on both sides, not a difference."""
    if not path.is_file():
        return
    old = validate_tree(read_yaml(path), [], str(path)).model_dump(mode="json")
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
