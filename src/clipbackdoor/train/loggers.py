"""External loggers as loop hooks: every record written to ``metrics.jsonl`` also goes to TensorBoard.

A logger sees exactly the records of ``metrics.jsonl`` (``Hook.on_record``), under the same names: loss
terms, learning rate, logit scale, throughput, CA/ASR/RA per epoch. A resumed run continues the same event
files: the writer opens with ``purge_step`` at the first record after the checkpoint, so TensorBoard drops
what the interrupted run logged past it and no step repeats. A logger that fails (a full disk, a missing
package) warns once and stops logging; training never stops for it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from clipbackdoor.config import ExperimentConfig
from clipbackdoor.train.hooks import Hook


class TensorBoardLogger(Hook):
    """Scalars of every record at its ``step``, and the resolved config as text, under ``<run>/tensorboard``."""

    def __init__(self, log_dir: Path, config: dict[str, Any]):
        self.log_dir, self.config = log_dir, config
        self.writer: Any = None
        self.failed = False

    def on_record(self, record: dict[str, Any]) -> None:
        if self.failed:
            return
        try:
            self._write(record)
        except Exception as err:  # any failure: a logger must never stop training
            self.failed = True
            warnings.warn(f"TensorBoard logging stopped: {err!r}", RuntimeWarning, stacklevel=2)

    def _write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=step)
            self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=1) + "\n```", step)
        for key, value in record.items():
            if key not in ("kind", "step") and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        if record.get("kind") == "epoch":
            self.writer.flush()  # an epoch's numbers are on disk before its checkpoint is


def build_loggers(cfg: ExperimentConfig, run_dir: Path) -> list[Hook]:
    """The logger hooks the run's ``log`` section asks for (rank 0 only: the caller decides)."""
    loggers: list[Hook] = []
    if cfg.log.tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard", cfg.model_dump(mode="json")))
    return loggers
