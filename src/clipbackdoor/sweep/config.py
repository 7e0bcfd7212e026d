"""What a sweep is: a poisoned run, a defense, a search space, a sampler and a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clipbackdoor.config import read_yaml, resolve_yaml, validate_as
from clipbackdoor.sweep.devices import parse_devices
from clipbackdoor.sweep.space import ParamSpec
from clipbackdoor.sweep.stopping import EarlyStopSpec


class SweepSpec(BaseModel):
    """The part of a sweep a study shares across its pre-trained models."""

    model_config = ConfigDict(extra="forbid")

    sampler: Literal["grid", "tpe", "nsga2", "random"] = "tpe"
    trials: int | None = Field(None, ge=1, description="trials to complete; default: the grid's size (grid only)")
    seed: int = 0
    space: dict[str, ParamSpec] = Field(min_length=1, description="dotted config key -> range, choices, grid")
    overrides: dict[str, Any] = Field(default_factory=dict, description="fixed for every trial, e.g. train.epochs")
    population: int = Field(8, ge=2, description="NSGA-II population size")
    startup_trials: int = Field(5, ge=1, description="TPE: random trials before the model takes over")
    early_stop: EarlyStopSpec | None = Field(
        None,
        description="stop hopeless cleaning runs by an Optuna pruner on the selection value (the sweep becomes "
        "single-objective on it); null: every run goes to its last epoch",
    )

    @model_validator(mode="after")
    def _stopping_needs_every_epoch(self) -> SweepSpec:
        if self.early_stop is not None and self.overrides.get("eval.every_epoch") is False:
            raise ValueError("early_stop judges every epoch's evaluation: it needs eval.every_epoch true")
        return self


class SweepConfig(SweepSpec):
    name: str
    run: str = Field(description="the poisoned run directory every trial cleans")
    defense: str = Field("cleanclip", description="built-in defense or a YAML recipe")
    output_dir: str = "runs/sweeps"
    storage: str | None = Field(None, description="Optuna storage URL; default: a journal file in the sweep dir")
    launcher: list[str] = Field(
        default_factory=list,
        description="command a trial runs under, e.g. [torchrun, --standalone, --nproc_per_node, '2'] "
        "(with devices_per_trial: 2); default: this Python",
    )
    devices: list[str] | None = Field(
        None, description="devices the sweep's trials may use, e.g. [0, 1, 2, 3]; null: every visible GPU"
    )
    devices_per_trial: int = Field(1, ge=1, description="devices in each worker's slot (CUDA_VISIBLE_DEVICES)")
    heartbeat_s: float = Field(30.0, gt=0, description="a running trial's worker proves it is alive this often")
    asr_threshold: float = Field(5.0, description="selection: highest CA among points with ASR <= this (%)")

    @field_validator("devices", mode="before")
    @classmethod
    def _parse_devices(cls, value: Any) -> Any:
        return parse_devices(value)  # "0,1,2,3" and [0, 1] too

    @property
    def sweep_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def journal(self) -> Path:
        """The default storage, a journal file in the sweep dir."""
        return self.sweep_dir / "journal.log"

    @property
    def storage_url(self) -> str:
        return self.storage or f"journal:{self.journal}"


def load_sweep_config(source: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    path = resolve_yaml(source)
    return validate_as(SweepConfig, read_yaml(path), list(overrides or []), str(path))
