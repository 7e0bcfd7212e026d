"""Search spaces: one parameter per dotted config key, as a range (TPE, NSGA-II) and a grid (grid sampler).

A parameter's name *is* the config key it overrides (``train.lr``, ``defense.ssl``), so a trial's
parameters are directly the overrides of its cleaning run.
"""

from __future__ import annotations

import json
import re
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clipbackdoor.config import ConfigError

Scalar = float | int | str | bool
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # what YAML 1.1 leaves a string


class ParamSpec(BaseModel):
    """A range ``low``..``high`` (``log`` scale, ``integer`` steps) or a list of ``choices``.

    ``grid`` lists the values the grid sampler visits (default: the choices); range samplers draw from
    the whole range, so a grid and a TPE sweep of one spec cover the same region.
    """

    model_config = ConfigDict(extra="forbid")

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[Scalar] | None = None
    grid: list[Scalar] | None = Field(None, description="values for the grid sampler")

    @field_validator("choices", "grid", mode="before")
    @classmethod
    def _numbers_as_numbers(cls, values: Any) -> Any:
        """YAML 1.1 reads ``1e-5`` (no dot) as a string; in a list of values it means the number."""
        if not isinstance(values, list):
            return values
        return [float(v) if isinstance(v, str) and NUMBER.fullmatch(v.strip()) else v for v in values]

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        ranged = self.low is not None or self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError("give either low and high, or choices")
        if ranged:
            if self.low is None or self.high is None or not self.low <= self.high:
                raise ValueError(f"need low <= high, got low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError("a log-scale range needs low > 0")
            outside = [v for v in self.grid or [] if not isinstance(v, int | float) or not self.low <= v <= self.high]
            if outside:
                raise ValueError(f"grid values {outside} lie outside [{self.low}, {self.high}]")
        elif self.grid is not None and any(v not in self.choices for v in self.grid):
            raise ValueError(f"grid values must be among the choices {self.choices}")
        return self

    def grid_values(self) -> list[Scalar] | None:
        return self.grid if self.grid is not None else self.choices

    def suggest(self, trial: optuna.Trial, name: str) -> Scalar:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


def grid_space(space: dict[str, ParamSpec]) -> dict[str, list[Scalar]]:
    """The grid sampler's search space; every parameter needs a grid (or choices)."""
    missing = [name for name, spec in space.items() if spec.grid_values() is None]
    if missing:
        raise ConfigError(f"the grid sampler needs a 'grid' list for {missing}")
    return {name: spec.grid_values() for name, spec in space.items()}


def as_overrides(params: dict[str, Any]) -> list[str]:
    """``{'train.lr': 1e-4}`` -> ``['train.lr=0.0001']``: JSON values, which the override parser reads as YAML."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]
