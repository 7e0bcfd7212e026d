"""One pre-training of a study: run in a subprocess under the study's launcher unless its directory already
holds the finished run, which is read back (used by the study's run, its seed axis and its filtering stage)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.config import ConfigError, ExperimentConfig
from clipbackdoor.metrics_log import read_records
from clipbackdoor.resolve import load_config
from clipbackdoor.study.config import StudyConfig, pretrain_command, pretrain_overrides
from clipbackdoor.sweep.devices import slot_env
from clipbackdoor.sweep.launch import run_teed
from clipbackdoor.train.loop import TrainingError
from clipbackdoor.train.run_directory import check_same_config


def pretrain_finished(run: ExperimentConfig) -> bool:
    """Whether ``run``'s directory holds its last epoch's checkpoint, made with this very config.

    Another config in it is refused here (ConfigError), as the run itself would.
    """
    try:
        latest = ckpt.latest_checkpoint(run.run_dir / "checkpoints")
    except FileNotFoundError:
        return False
    check_same_config(run, run.run_dir / "config.yaml")
    return latest["epoch"] >= run.train.epochs


def last_epoch(run_dir: Path) -> dict[str, Any]:
    epochs = [r for r in read_records(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    if not epochs:
        raise ConfigError(f"{run_dir}/metrics.jsonl holds no epoch record")
    return epochs[-1]


def run_pretraining(
    cfg: StudyConfig, tag: str, log: Any = print, seed: int | None = None, filtered: Path | None = None
) -> dict[str, Any]:
    """Pre-train ``tag`` (under ``seed``, on the ``filtered`` CSV) in a subprocess under ``pretrain_launcher``
    (resuming it), unless it is finished; returns its last epoch record. Output goes to
    ``<study>/pretrain/<name>.log`` and ``log``."""
    run = load_config(cfg.base, pretrain_overrides(cfg, tag, seed, filtered))
    start = "" if cfg.finetune is None else f", fine-tuned from {run.model.checkpoint}"
    log(f"== pre-training {run.name} (objective {run.objective}, seed {run.seed}{start}) -> {run.run_dir}")
    if pretrain_finished(run):
        log(f"   finished earlier: read back from {run.run_dir}")
    else:
        log_path = cfg.study_dir / "pretrain" / f"{run.name}.log"
        env = slot_env(os.environ, tuple(cfg.devices or ()))  # the study's devices, all of them
        code = run_teed(pretrain_command(cfg, tag, seed, filtered), log_path, env, echo=log)
        if code != 0:
            raise TrainingError(f"pre-training {run.name} failed with exit code {code}; its output is in {log_path}")
    return last_epoch(run.run_dir)
