"""External loggers as loop hooks: every record written to ``metrics.jsonl`` also goes to TensorBoard and W&B.

A logger sees exactly the records of ``metrics.jsonl`` (``Hook.on_record``), under the same names: loss
terms, learning rate, logit scale, throughput, CA/ASR/RA per epoch; and the resolved config. A resumed run
redoes what came after its checkpoint, yet no step reaches a logger twice: TensorBoard's writer opens with
``purge_step`` at the first record after the checkpoint, so TensorBoard drops what the interrupted run logged
past it; W&B cannot drop anything, so the W&B logger holds records back until a checkpoint covers them. A
logger that fails (a full disk, a missing package) warns once and stops logging; training never stops for it.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipbackdoor.config import ExperimentConfig, WandbConfig
from clipbackdoor.hooks import Hook


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers a record holds, by name (``kind`` and ``step`` say where they go, not what to plot)."""
    return {
        k: v
        for k, v in record.items()
        if k not in ("kind", "step") and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"train": {"lr": 0.1}}`` as ``{"train.lr": 0.1}``: TensorBoard's hparams are one level of scalars and
    strings, so a list becomes its JSON text and a None (a hparam without a value) is left out."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif value is not None:
            flat[prefix + key] = json.dumps(value) if isinstance(value, list) else value
    return flat


class _Logger(Hook):
    """What every logger shares: its first failure warns once and stops it, and training goes on."""

    name = "logger"

    def __init__(self) -> None:
        self.failed = False

    def _safely(self, action: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as err:  # any failure: a logger must never stop training
            self.failed = True
            warnings.warn(f"{self.name} logging stopped: {err!r}", RuntimeWarning, stacklevel=3)


class TensorBoardLogger(_Logger):
    """Scalars of every record at its ``step`` under ``<run>/tensorboard``; the resolved config as text and as
    hparams (flattened: ``train.lr``), so TensorBoard's HParams tab compares runs by any config value."""

    name = "TensorBoard"

    def __init__(self, log_dir: Path, config: dict[str, Any]):
        super().__init__()
        self.log_dir, self.config = log_dir, config
        self.writer: Any = None

    def on_record(self, record: dict[str, Any]) -> None:
        self._safely(lambda: self._write(record))

    def _write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        if self.writer is None:
            from tensorboard.plugins.hparams.summary_v2 import hparams_pb
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=step)
            self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=1) + "\n```", step)
            self.writer.file_writer.add_summary(hparams_pb(_flat(self.config)), step)
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, step)
        # every record on disk as metrics.jsonl has it (SummaryWriter alone waits up to 2 minutes): TensorBoard
        # shows a step when it is logged, and a crash leaves none of it in a buffer; a record per log_every steps
        self.writer.flush()


class WandbLogger(_Logger):
    """Every record at its ``step`` in a W&B run whose config is the resolved config.

    W&B keeps whatever it is sent, and its steps only go forward, while a resumed run redoes everything after
    its last checkpoint. So records wait here until their epoch's checkpoint is saved (``on_checkpoint``) and
    reach W&B exactly once; a crash loses only the waiting ones, which the resumed run writes again. The run's
    id is kept in ``<run>/wandb_id``, so a resumed run continues the same W&B run (``resume="allow"``).

    W&B holds one value per name and step, and an epoch's last step record and the epoch record may share a
    step: so the epoch record's loss terms, the epoch means, go under ``epoch/`` (``epoch/train/loss``) and
    never overwrite the step's. The other names they share (``lr``, ``epoch``) have one value at a step.
    """

    name = "W&B"

    def __init__(self, settings: WandbConfig, run_dir: Path, config: dict[str, Any], last_epoch: int):
        super().__init__()
        self.settings, self.run_dir, self.config, self.last_epoch = settings, run_dir, config, last_epoch
        self.waiting: list[tuple[int, dict[str, float]]] = []
        self.run: Any = None

    def on_record(self, record: dict[str, Any]) -> None:
        if not self.failed:
            values = _scalars(record)
            if record.get("kind") == "epoch":
                values = {f"epoch/{k}" if k.startswith("train/") else k: v for k, v in values.items()}
            self.waiting.append((int(record.get("step", 0)), values))

    def on_checkpoint(self, epoch: int) -> None:
        self._safely(lambda: self._send(finish=epoch == self.last_epoch))

    def _send(self, finish: bool) -> None:
        if self.run is None:
            self.run = self._start()
        for step, values in self.waiting:
            self.run.log(values, step=step)
        self.waiting.clear()
        if finish:
            self.run.finish()

    def _start(self) -> Any:
        import wandb

        id_file = self.run_dir / "wandb_id"
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:16])
        return wandb.init(
            project=self.settings.project,
            entity=self.settings.entity,
            mode=self.settings.mode,
            dir=self.settings.dir or self.run_dir,
            id=id_file.read_text().strip(),
            resume="allow",
            name=self.config["name"],
            config=self.config,
            reinit="create_new",  # this run only: never another run of the process, nor wandb.run
        )


def build_loggers(cfg: ExperimentConfig, run_dir: Path) -> list[Hook]:
    """The logger hooks the run's ``log`` section asks for (rank 0 only: the caller decides)."""
    config = cfg.model_dump(mode="json")
    loggers: list[Hook] = []
    if cfg.log.tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard", config))
    if cfg.log.wandb:
        loggers.append(WandbLogger(cfg.log.wandb, run_dir, config, cfg.train.epochs))
    return loggers
