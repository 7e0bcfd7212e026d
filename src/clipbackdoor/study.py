"""The whole study in one resumable command: poison -> pre-train per objective -> sweep each defense -> report.

Every stage writes its own files under ``<output_dir>/<name>/`` and picks up where it stopped: poisoning
reuses an identical poisoned set, pre-training resumes from its last checkpoint (a finished run is only
read back), sweeps resume from their Optuna storage, and the report is rebuilt from what is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clipbackdoor.config import ConfigError, load_config, read_yaml, resolve_yaml, save_config, validate_as
from clipbackdoor.sweep.config import SweepConfig, SweepSpec
from clipbackdoor.sweep.space import as_overrides


class PretrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys, e.g. objective: {mmcl: 1}")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    output_dir: str = "runs"
    base: str = Field("demo", description="experiment config every stage starts from (its poison section too)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="applied to the base for every stage")
    pretrain: dict[str, PretrainSpec] = Field(min_length=1, description="one poisoned model per entry")
    defenses: dict[str, SweepSpec] = Field(min_length=1, description="defense -> its sweep, run on every model")
    workers: int = Field(1, ge=1, description="trials run at once in each sweep")
    storage: str | None = Field(None, description="Optuna storage for all sweeps; default: a journal per sweep")
    launcher: list[str] = Field(default_factory=list, description="what each trial runs under, e.g. torchrun")
    asr_threshold: float = 5.0
    figure_format: Literal["png", "svg"] = "png"

    @model_validator(mode="after")
    def _distinct_sweep_names(self) -> StudyConfig:
        stems = [Path(defense).stem for defense in self.defenses]
        twice = sorted({stem for stem in stems if stems.count(stem) > 1})
        if twice:
            raise ValueError(f"defenses: two recipes named {twice} would share a sweep; rename one file")
        return self

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_study_config(source: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    path = resolve_yaml(source)
    return validate_as(StudyConfig, read_yaml(path), list(overrides or []), str(path))


def stage_overrides(cfg: StudyConfig) -> list[str]:
    """The base config's overrides, with the poisoned data (and what reads it) moved into the study dir."""
    data = cfg.study_dir / "data"
    moved = {"poison.output": str(data), "data.train": {"source": "csv", "path": str(data / "train.csv")}}
    moved["eval.attack"] = str(data / "manifest.json")
    return as_overrides({**moved, **cfg.overrides})


def sweep_configs(cfg: StudyConfig) -> list[SweepConfig]:
    return [
        SweepConfig(
            **spec.model_dump(),
            name=f"{tag}--{Path(defense).stem}",  # "mmcl--ssl-only" reads apart from "mmcl-ssl--..."
            run=str(cfg.study_dir / "pretrain" / tag),
            defense=defense,
            output_dir=str(cfg.study_dir / "sweeps"),
            storage=cfg.storage,
            launcher=cfg.launcher,
            asr_threshold=cfg.asr_threshold,
        )
        for tag in cfg.pretrain
        for defense, spec in cfg.defenses.items()
    ]


def run_study(cfg: StudyConfig, command: str | None = None, log: Any = print) -> Path:
    """Run every stage that is not finished yet; returns the report's Markdown file."""
    from clipbackdoor.attacks.poison import write_poisoned_dataset
    from clipbackdoor.report.build import build_report
    from clipbackdoor.sweep.runner import run_sweep
    from clipbackdoor.train.loop import fit

    save_config(cfg, cfg.study_dir / "study.yaml")
    base = stage_overrides(cfg)
    poison = load_config(cfg.base, base).poison
    if poison is None:
        raise ConfigError(f"study {cfg.name}: its base config '{cfg.base}' has no poison section")
    log(f"== poisoning -> {poison.output}")
    write_poisoned_dataset(poison)
    for tag, spec in cfg.pretrain.items():
        run = load_config(cfg.base, [*base, f"name={tag}", f"output_dir={cfg.study_dir / 'pretrain'}",
                                     *as_overrides(spec.overrides)])  # fmt: skip
        log(f"== pre-training {tag} (objective {run.objective}) -> {run.run_dir}")
        last = fit(run)[-1]
        log(f"   CA {last['eval/clean_top1']:.2f} %, ASR {last['eval/asr_top1']:.2f} % after epoch {last['epoch']}")
    sweeps = sweep_configs(cfg)
    for sweep in sweeps:
        log(f"== sweep {sweep.name}: {sweep.defense}, {sweep.sampler} sampler -> {sweep.sweep_dir}")
        run_sweep(sweep, threads=cfg.workers)
    report = build_report(
        [s.sweep_dir for s in sweeps],
        cfg.study_dir / "report",
        title=f"Study {cfg.name}",
        asr_threshold=cfg.asr_threshold,
        fmt=cfg.figure_format,
        command=command,
    )
    log(f"== report -> {report} (and report.html)")
    return report
