"""A study's config: which pre-trainings, which defenses swept how, the seeds axis, the detection stage, and
where everything runs; and the overrides that turn the study's base config into each of its runs.

Read by every stage of :mod:`clipbackdoor.study` (run, plan, progress, seed axis, filtering), so it imports
none of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clipbackdoor.config import ConfigError, read_yaml, resolve_yaml, validate_as
from clipbackdoor.detect.run import DETECTORS
from clipbackdoor.sweep.config import SweepConfig, SweepSpec
from clipbackdoor.sweep.devices import parse_devices
from clipbackdoor.sweep.launch import cli_command
from clipbackdoor.sweep.space import as_overrides

SCORE_PREFIXES = ("image_", "text_")


class FilterSpec(BaseModel):
    """The study's detection stage and the filter it applies before pre-training again."""

    model_config = ConfigDict(extra="forbid")

    pretrain: list[str] | None = Field(None, description="the pre-trained models (study tags) scored; null: all")
    detectors: list[str] = Field(default_factory=lambda: list(DETECTORS), description="scored, for the AUROC table")
    by: str = Field("image_dao", description="the score column whose top pairs are dropped (image_dao, text_slof...)")
    drop_percent: float = Field(gt=0, lt=100, description="share of the pairs dropped, highest scores first")
    k: int = Field(16, ge=1, description="neighbours of k-distance, SLOF and DAO (the paper's script: 16)")
    lid_k: int = Field(64, ge=2, description="neighbours of LID (the paper's script: 64)")
    reference_size: int = Field(10_000, ge=2, description="pairs drawn as the neighbourhood set")
    text: bool = Field(True, description="also score the caption embeddings")
    retrain: bool = Field(True, description="pre-train again on the filtered data (false: detection AUROCs only)")

    @model_validator(mode="after")
    def _known(self) -> FilterSpec:
        unknown = [d for d in self.detectors if d not in DETECTORS]
        if unknown:
            raise ValueError(f"filter.detectors: unknown {unknown}; choose from {list(DETECTORS)}")
        base = self.by.removeprefix("image_").removeprefix("text_")
        if self.by != "cosine" and (not self.by.startswith(SCORE_PREFIXES) or base not in self.detectors):
            raise ValueError(
                f"filter.by={self.by!r}: name a scored column, 'image_<detector>' or 'text_<detector>' with the "
                f"detector among filter.detectors, or 'cosine'"
            )
        if self.by.startswith("text_") and not self.text:
            raise ValueError(f"filter.by={self.by!r} needs filter.text: true")
        return self


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


class CleanModelSpec(BaseModel):
    """A model pre-trained on the clean source once per study: the surrogate a BadCLIP patch is optimised against
    (another seed than the poisoned models: the patch transfers) and, under ``finetune``, every poisoned model's
    start. Trained by the study (the base config on ``poison.source``, no attack) unless ``checkpoint`` is given."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="a clean model to use instead (e.g. a pre-trained RN50)")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="of its pre-training; default seed: the base's + 1000"
    )


class FinetuneSpec(BaseModel):
    """The fine-tuning threat model (BadCLIP's; CleanCLIP's 400M setting): each poisoned model is the clean
    model fine-tuned on the poisoned data, with these overrides (BadCLIP's README: train.lr 1e-6, batch 128,
    10 epochs, 10k warm-up steps), rather than pre-trained from scratch on it."""

    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = Field(default_factory=dict, description="applied to every poisoning run")


class AttackSpec(BaseModel):
    """One attack of the attack axis: its poison overrides (``poison.trigger``, ``poison.target``...). A
    ``badclip`` trigger gets its patch path and its ``poison.optimize.surrogate`` (the clean model) filled in."""

    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys over the study's overrides")
    seeds: bool = Field(True, description="run the study's seeds axis for this attack")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    output_dir: str = "runs"
    base: str = Field("demo", description="experiment config every stage starts from (its poison section too)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="applied to the base for every stage")
    pretrain: dict[str, PretrainSpec] = Field(min_length=1, description="one poisoned model per entry")
    defenses: dict[str, SweepSpec] = Field(min_length=1, description="defense -> its sweep, run on every model")
    workers: int | None = Field(
        None,
        ge=1,
        description="trials at once; default: one per device slot (devices // devices_per_trial), 1 on CPU",
    )
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
    clean_model: CleanModelSpec | None = Field(
        None, description="a clean model: BadCLIP's surrogate, and the start of every poisoned model under finetune"
    )
    finetune: FinetuneSpec | None = Field(
        None, description="poison by fine-tuning the clean model (needs clean_model), not by pre-training"
    )
    attacks: dict[str, AttackSpec] | None = Field(
        None,
        description="the attack axis: the whole study once per attack (in <study>/attacks/<name>), one report "
        "with the attack x objective x defense table",
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

    @model_validator(mode="after")
    def _clean_model_for_finetune(self) -> StudyConfig:
        if self.finetune is not None and self.clean_model is None:
            raise ValueError("finetune: fine-tuning starts from a clean model; add clean_model: {} (or a checkpoint)")
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


def only_pretrainings(cfg: StudyConfig, tags: list[str]) -> StudyConfig:
    """The study cut down to the pre-trainings ``tags`` and their seeds: no cleaning, no filtering. For a new
    or changed pre-training's results before the sweeps (the full study reads the finished runs back)."""
    unknown = sorted(set(tags) - set(cfg.pretrain))
    if unknown:
        raise ConfigError(f"study {cfg.name}: --only {unknown} are not among the pre-trainings {list(cfg.pretrain)}")
    seeds = cfg.seeds and cfg.seeds.model_copy(
        update={"defenses": [], "pretrain": [t for t in cfg.seeded_pretrain if t in tags]}
    )
    pretrain = {tag: spec for tag, spec in cfg.pretrain.items() if tag in tags}
    return cfg.model_copy(update={"pretrain": pretrain, "defenses": {}, "seeds": seeds, "filter": None})


def trial_workers(cfg: StudyConfig, devices: list[str]) -> int:
    """Cleaning trials run at once: ``workers`` if given, else one per device slot of ``devices``
    (``devices_per_trial`` each), and one on a machine without devices."""
    return cfg.workers or max(1, len(devices) // cfg.devices_per_trial)


def run_name(tag: str, seed: int | None = None, filtered: bool = False) -> str:
    """``mmcl``; ``mmcl-seed1`` for pre-training ``mmcl`` re-run under another seed; ``mmcl-filtered`` for
    it pre-trained again on the data its detection stage filtered."""
    return tag + ("" if seed is None else f"-seed{seed}") + ("-filtered" if filtered else "")


CLEAN_MODEL = "clean-model"  # the clean model's run, <study>/pretrain/clean-model


def clean_model_path(cfg: StudyConfig) -> Path:
    """The study's clean model: the checkpoint given, or the run the study trains."""
    assert cfg.clean_model is not None
    return Path(cfg.clean_model.checkpoint or cfg.study_dir / "pretrain" / CLEAN_MODEL)


def pretrain_overrides(cfg: StudyConfig, tag: str, seed: int | None = None, filtered: Path | None = None) -> list[str]:
    """The overrides of pre-training ``tag`` (under ``seed``, on the ``filtered`` CSV, if given): the stages'
    own, under ``finetune`` the clean model as the start and the fine-tuning overrides, its name and
    directory, its spec's."""
    spec = cfg.pretrain[tag]
    seeded = [] if seed is None else [f"seed={seed}"]
    data = [] if filtered is None else as_overrides({"data.train": {"source": "csv", "path": str(filtered)}})
    finetune = [] if cfg.finetune is None else [
        f"model.checkpoint={clean_model_path(cfg)}", *as_overrides(cfg.finetune.overrides)
    ]  # fmt: skip
    return [*stage_overrides(cfg), *finetune, f"name={run_name(tag, seed, filtered is not None)}",
            f"output_dir={cfg.study_dir / 'pretrain'}", *as_overrides(spec.overrides), *seeded, *data]  # fmt: skip


def pretrain_command(cfg: StudyConfig, tag: str, seed: int | None = None, filtered: Path | None = None) -> list[str]:
    """``clipbackdoor pretrain <base> <overrides>`` under the study's pre-training launcher."""
    return cli_command(cfg.pretrain_launcher, "pretrain", cfg.base, *pretrain_overrides(cfg, tag, seed, filtered))
