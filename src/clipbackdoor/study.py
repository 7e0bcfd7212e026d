"""The whole study in one resumable command: poison -> pre-train per objective -> sweep each defense ->
(seeds axis) -> (detect, filter, pre-train again) -> report.

Every stage writes its own files under ``<output_dir>/<name>/`` and picks up where it stopped: poisoning
reuses an identical poisoned set, pre-training resumes from its last checkpoint (a finished run is only
read back), sweeps resume from their Optuna storage, and the report is rebuilt from what is there.

Each pre-training is a ``clipbackdoor pretrain`` subprocess under ``pretrain_launcher`` (e.g. an 8-GPU
torchrun), its output in ``pretrain/<tag>.log``; each cleaning trial one under ``clean_launcher``, on its
worker's device slot (``devices``, ``devices_per_trial``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clipbackdoor.config import ConfigError, ExperimentConfig, read_yaml, resolve_yaml, save_config, validate_as
from clipbackdoor.filtering import FilterSpec
from clipbackdoor.metrics_log import read_records
from clipbackdoor.resolve import load_config
from clipbackdoor.sweep.config import SweepConfig, SweepSpec
from clipbackdoor.sweep.devices import device_slots, parse_devices, resolve_devices, slot_env
from clipbackdoor.sweep.launch import cli_command, run_teed
from clipbackdoor.sweep.space import as_overrides


class PretrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys, e.g. objective: {mmcl: 1}")
    clean: bool = Field(
        True, description="clean this model with the study's defenses (false: a robust pre-training, reported as is)"
    )


class SeedsSpec(BaseModel):
    """The seeds axis: how much the headline numbers move with the training seed.

    The full study (every grid point) runs once, at the base config's seed. Every other seed in ``values``
    re-runs each pre-training, and then only the setting each listed defense selected (its parameters and
    epoch) on that seed's poisoned model, not the whole grid. The poisoned data stays the same (``poison.seed``):
    the spread is the one of training, not of which pairs were poisoned.
    """

    model_config = ConfigDict(extra="forbid")

    values: list[int] = Field(min_length=2, description="training seeds, e.g. [0, 1, 2]")
    defenses: list[str] | None = Field(None, description="defenses whose selected setting is re-run; null: all")
    pretrain: list[str] | None = Field(None, description="pre-trainings (study tags) re-run per seed; null: all")


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
    pretrain_launcher: list[str] = Field(
        default_factory=list,
        description="what each pre-training runs under, e.g. [torchrun, --standalone, --nproc_per_node, '8']; "
        "default: this Python",
    )
    clean_launcher: list[str] = Field(
        default_factory=list, description="what each cleaning trial runs under; default: this Python"
    )
    devices: list[str] | None = Field(
        None, description="devices the study may use, e.g. [0, 1, 2, 3]; null: every visible GPU"
    )
    devices_per_trial: int = Field(1, ge=1, description="devices in each sweep worker's slot")
    asr_threshold: float = 5.0
    seeds: SeedsSpec | None = Field(None, description="re-run pre-training and the selected settings per seed")
    filter: FilterSpec | None = Field(
        None, description="score the poisoned data with each pre-trained model, drop the top pairs, pre-train again"
    )
    figure_format: Literal["png", "svg"] = "png"

    @model_validator(mode="before")
    @classmethod
    def _no_launcher(cls, tree: Any) -> Any:
        """``launcher`` (trials only) was split in two; an empty one, as old study.yaml files hold, means nothing."""
        if isinstance(tree, dict) and "launcher" in tree:
            if tree["launcher"]:
                raise ValueError(
                    "'launcher' is replaced by 'pretrain_launcher' (what each pre-training runs under, e.g. "
                    "[torchrun, --standalone, --nproc_per_node, '8']) and 'clean_launcher' (what each cleaning "
                    "trial runs under; [] for single-device trials)"
                )
            tree = {k: v for k, v in tree.items() if k != "launcher"}
        return tree

    @field_validator("devices", mode="before")
    @classmethod
    def _parse_devices(cls, value: Any) -> Any:
        return parse_devices(value)

    @model_validator(mode="after")
    def _distinct_sweep_names(self) -> StudyConfig:
        stems = [Path(defense).stem for defense in self.defenses]
        twice = sorted({stem for stem in stems if stems.count(stem) > 1})
        if twice:
            raise ValueError(f"defenses: two recipes named {twice} would share a sweep; rename one file")
        return self

    @model_validator(mode="after")
    def _known_filter_models(self) -> StudyConfig:
        unknown = sorted(set(self.filter.pretrain or []) - set(self.pretrain)) if self.filter else []
        if unknown:
            raise ValueError(f"filter.pretrain: {unknown} are not among the pre-trainings {list(self.pretrain)}")
        return self

    @model_validator(mode="after")
    def _known_seed_defenses(self) -> StudyConfig:
        unknown = sorted(set(self.seeds.defenses or []) - set(self.defenses)) if self.seeds else []
        if unknown:
            raise ValueError(f"seeds.defenses: {unknown} are not among the study's defenses {list(self.defenses)}")
        unknown = sorted(set(self.seeds.pretrain or []) - set(self.pretrain)) if self.seeds else []
        if unknown:
            raise ValueError(f"seeds.pretrain: {unknown} are not among the pre-trainings {list(self.pretrain)}")
        return self

    @property
    def seeded_pretrain(self) -> list[str]:
        """The pre-trainings the seeds axis re-runs."""
        return (self.seeds.pretrain or list(self.pretrain)) if self.seeds else []

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def read_study_tree(source: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A study file's tree with its ``extends`` resolved, so a recipe that adds axes to the paper's study runs
    that study's stanzas, not a copy. The named study (a file beside this one, else a path from the working
    directory or a built-in name; never this file itself) is read first, then this file's keys go over it one
    level deep: a mapping such as ``pretrain``, ``defenses`` or ``overrides`` gains this file's entries, an
    entry given in both is this file's whole (a pre-training's objective is replaced, not summed), and
    anything else is replaced. The extending file must name itself: it gets a directory of its own."""
    path = resolve_yaml(source)
    chain = (*_chain, path.resolve())
    if path.resolve() in _chain:
        raise ConfigError(f"{path}: 'extends' loops back to it ({' -> '.join(str(p) for p in chain)})")
    tree = read_yaml(path)
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' names one study (a file or built-in name), got {parent!r}")
    if "name" not in tree:
        raise ConfigError(f"{path}: a study that extends {parent!r} needs its own 'name' (else it shares its runs)")
    beside = [c for c in (path.parent / parent, path.parent / f"{parent}.yaml") if c.is_file()]
    beside = [c for c in beside if c.resolve() != path.resolve()]  # ./study-cc3m.yaml may extend the built-in
    try:
        parent_tree = read_study_tree(beside[0] if beside else parent, chain)
    except ConfigError as err:
        raise ConfigError(f"{path}: extends {parent!r}: {err}") from None
    merged = dict(parent_tree)
    for key, value in tree.items():
        below = parent_tree.get(key)
        merged[key] = {**below, **value} if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


def load_study_config(source: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    path = resolve_yaml(source)
    parent = read_yaml(path).get("extends")  # a bad key may come from the study it extends: name both
    origin = f"{path} (extends {parent!r})" if parent else str(path)
    return validate_as(StudyConfig, read_study_tree(path), list(overrides or []), origin)


def load_study_dir(study_dir: str | Path) -> StudyConfig:
    """The study a directory holds (its saved study.yaml), placed where the directory is now: a study read
    from another machine's mount, or moved, finds its runs and journals there."""
    study_dir = Path(study_dir)
    if not (study_dir / "study.yaml").is_file():
        raise ConfigError(f"{study_dir}: no study.yaml; is it a study directory (runs/<name>)?")
    return load_study_config(study_dir / "study.yaml", [f"output_dir={study_dir.parent}", f"name={study_dir.name}"])


def stage_overrides(cfg: StudyConfig) -> list[str]:
    """The base config's overrides, with the poisoned data (and what reads it) moved into the study dir.

    Pre-training reads the poisoned CSV, or the poisoned shards once poisoning has written them
    (``poison.shard_size``), indexed so that any number of processes trains on the same batches."""
    data = cfg.study_dir / "data"
    train: dict[str, Any] = {"source": "csv", "path": str(data / "train.csv")}
    manifest = data / "manifest.json"
    shards = json.loads(manifest.read_text()).get("files", {}).get("shards") if manifest.is_file() else None
    if shards:
        train = {"source": "webdataset", "access": "index", "urls": str(data / shards)}
    moved = {"poison.output": str(data), "data.train": train, "eval.attack": str(manifest)}
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
            launcher=cfg.clean_launcher,
            devices=cfg.devices,
            devices_per_trial=cfg.devices_per_trial,
            asr_threshold=cfg.asr_threshold,
        )
        for tag, pretrain in cfg.pretrain.items()
        if pretrain.clean
        for defense, spec in cfg.defenses.items()
    ]


def run_name(tag: str, seed: int | None = None, filtered: bool = False) -> str:
    """``mmcl``; ``mmcl-seed1`` for pre-training ``mmcl`` re-run under another seed; ``mmcl-filtered`` for
    it pre-trained again on the data its detection stage filtered."""
    return tag + ("" if seed is None else f"-seed{seed}") + ("-filtered" if filtered else "")


def pretrain_overrides(cfg: StudyConfig, tag: str, seed: int | None = None, filtered: Path | None = None) -> list[str]:
    """The overrides of pre-training ``tag`` (under ``seed``, on the ``filtered`` CSV, if given): the stages'
    own, its name and directory, its spec's."""
    spec = cfg.pretrain[tag]
    seeded = [] if seed is None else [f"seed={seed}"]
    data = [] if filtered is None else as_overrides({"data.train": {"source": "csv", "path": str(filtered)}})
    return [*stage_overrides(cfg), f"name={run_name(tag, seed, filtered is not None)}",
            f"output_dir={cfg.study_dir / 'pretrain'}", *as_overrides(spec.overrides), *seeded, *data]  # fmt: skip


def pretrain_command(cfg: StudyConfig, tag: str, seed: int | None = None, filtered: Path | None = None) -> list[str]:
    """``clipbackdoor pretrain <base> <overrides>`` under the study's pre-training launcher."""
    return cli_command(cfg.pretrain_launcher, "pretrain", cfg.base, *pretrain_overrides(cfg, tag, seed, filtered))


def pretrain_finished(run: ExperimentConfig) -> bool:
    """Whether ``run``'s directory holds its last epoch's checkpoint, made with this very config.

    Another config in it is refused here (ConfigError), as the run itself would.
    """
    from clipbackdoor import checkpoints as ckpt
    from clipbackdoor.train.loop import check_same_config

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
    from clipbackdoor.train.loop import TrainingError

    run = load_config(cfg.base, pretrain_overrides(cfg, tag, seed, filtered))
    log(f"== pre-training {run.name} (objective {run.objective}, seed {run.seed}) -> {run.run_dir}")
    if pretrain_finished(run):
        log(f"   finished earlier: read back from {run.run_dir}")
    else:
        log_path = cfg.study_dir / "pretrain" / f"{run.name}.log"
        env = slot_env(os.environ, tuple(cfg.devices or ()))  # the study's devices, all of them
        code = run_teed(pretrain_command(cfg, tag, seed, filtered), log_path, env, echo=log)
        if code != 0:
            raise TrainingError(f"pre-training {run.name} failed with exit code {code}; its output is in {log_path}")
    return last_epoch(run.run_dir)


def run_study(cfg: StudyConfig, command: str | None = None, log: Any = print) -> Path:
    """Run every stage that is not finished yet, writing ``progress.json`` as it goes; returns the report's
    Markdown file."""
    from clipbackdoor.plan import format_plan, plan_study
    from clipbackdoor.progress import ProgressWriter

    device_slots(resolve_devices(cfg.devices), cfg.devices_per_trial, cfg.workers)  # fail now, not after days
    stages = plan_study(cfg)
    log(format_plan(stages))
    save_config(cfg, cfg.study_dir / "study.yaml")
    with ProgressWriter(cfg, stages, log) as progress:
        return _run_stages(cfg, command, progress.log_stage)


def _run_stages(cfg: StudyConfig, command: str | None, log: Any) -> Path:
    from clipbackdoor.attacks.poison import write_poisoned_dataset
    from clipbackdoor.filtering import run_filtering
    from clipbackdoor.report.build import build_report
    from clipbackdoor.seeds import run_seeds
    from clipbackdoor.sweep.runner import run_sweeps

    base = stage_overrides(cfg)
    poison = load_config(cfg.base, base).poison
    if poison is None:
        raise ConfigError(f"study {cfg.name}: its base config '{cfg.base}' has no poison section")
    log(f"== poisoning -> {poison.output}")
    write_poisoned_dataset(poison)
    for tag in cfg.pretrain:
        last = run_pretraining(cfg, tag, log)
        log(f"   CA {last['eval/clean_top1']:.2f} %, ASR {last['eval/asr_top1']:.2f} % after epoch {last['epoch']}")
    sweeps = sweep_configs(cfg)
    for sweep in sweeps:
        log(f"== sweep {sweep.name}: {sweep.defense}, {sweep.sampler} sampler -> {sweep.sweep_dir}")
    run_sweeps(sweeps, threads=cfg.workers)  # on the study's slots together: none idles at a sweep's end
    seeds = run_seeds(cfg, sweeps, log) if cfg.seeds else None
    filtering = run_filtering(cfg, log) if cfg.filter else None
    report = build_report(
        [s.sweep_dir for s in sweeps],
        cfg.study_dir / "report",
        title=f"Study {cfg.name}",
        asr_threshold=cfg.asr_threshold,
        fmt=cfg.figure_format,
        command=command,
        seeds=seeds,
        filtering=filtering,
        pretrained=[cfg.study_dir / "pretrain" / tag for tag in cfg.pretrain],
    )
    log(f"== report -> {report} (and report.html)")
    return report
