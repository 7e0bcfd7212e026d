"""``clipbackdoor plan``: what a config or a study will compute, before anything runs or any GPU is paid for.

Per stage: processes and devices; the global, per-process and micro batch and the accumulation they imply;
steps per epoch and the warm-up's share of all steps; samples seen; evaluations and their images; runs; the
checkpoints' disk size; and device-hours estimated from a throughput measurement under benchmarks/results
for that model and precision (naming the file), or "no measurement". It warns, naming the key, about what
would make the run another experiment than the one intended.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from clipbackdoor.cleaning import with_recipe
from clipbackdoor.config import (
    ConfigError,
    CsvLabelled,
    CsvPairs,
    ExperimentConfig,
    FashionMNISTLabelled,
    FashionMNISTPairs,
    ImageNetLabelled,
    ModelConfig,
    PatchOptimization,
    WebDatasetPairs,
)
from clipbackdoor.data.batching import BatchLayout, batch_layout
from clipbackdoor.data.webdataset_source import shard_urls
from clipbackdoor.interop import CheckpointError
from clipbackdoor.models import create_model, model_name, read_model_checkpoint
from clipbackdoor.objectives import ObjectiveCost, WeightedObjective
from clipbackdoor.resolve import load_config, validate_tree
from clipbackdoor.study.attack_axis import attack_studies, clean_model_study, needs_clean_model_run
from clipbackdoor.study.config import (
    CLEAN_MODEL,
    StudyConfig,
    pretrain_overrides,
    run_name,
    stage_overrides,
    sweep_configs,
    trial_workers,
)
from clipbackdoor.study.data_rate import feed_report
from clipbackdoor.study.measurements import Throughput, device_kind, find_throughput, measured_key, measurement_dirs
from clipbackdoor.study.seed_axis import base_seed, other_seeds, seed_sweep_home
from clipbackdoor.sweep.config import SweepConfig
from clipbackdoor.sweep.devices import resolve_devices
from clipbackdoor.sweep.space import as_overrides
from clipbackdoor.sweep.trials import budget

WARMUP_WARN_SHARE = 0.25
IMAGENET_VAL = 50_000
FASHION_MNIST = {"train": 60_000, "test": 10_000}
# weights (fp32) + AdamW's two moments (fp32) per parameter, as a checkpoint stores them
CHECKPOINT_BYTES_PER_PARAM = 12


@dataclass
class Count:
    """A number of pairs or images and where it came from (counted, a key, a known dataset size)."""

    n: int | None
    source: str


@dataclass(frozen=True)
class Where:
    """Where a running study keeps a stage's progress: a pre-training's run directory (its metrics.jsonl), or
    the sweeps whose trials are its cleaning runs, as (Optuna study name, storage URL)."""

    run_dir: Path | None = None
    sweeps: tuple[tuple[str, str], ...] = ()


@dataclass
class Stage:
    """One stage of a plan (a pre-training, or one sweep's cleaning runs): what it runs, and on what."""

    name: str
    processes: int
    launcher: str
    layout: BatchLayout
    pairs: Count
    epochs: int
    warmup_steps: int
    eval_images: Count
    evaluations_per_run: int
    runs: int = 1
    at_once: int = 1
    checkpoint_bytes: int = 0
    throughput: Throughput | None = None  # samples/s per device, the file it came from, the device measured
    warnings: list[str] = field(default_factory=list)
    feed: str | None = None  # what the loader's cores deliver per process (feed.py); None for in-memory data
    where: Where | None = None  # in a study: where its progress is (progress.py)
    stops_early: bool = False  # cleaning runs an early-stopping sweep may end before their last epoch
    cost: ObjectiveCost | None = None  # encoder passes per pair and the loader's views (the objective's own)
    before: str | None = None  # what the study runs first, outside training (BadCLIP's patch optimisation)

    @property
    def cleaning(self) -> bool:
        return self.where is not None and bool(self.where.sweeps)

    @property
    def steps_per_epoch(self) -> int | None:
        return None if self.pairs.n is None else self.layout.steps_per_epoch(self.pairs.n)

    @property
    def total_steps(self) -> int | None:
        return None if self.steps_per_epoch is None else self.steps_per_epoch * self.epochs

    @property
    def samples_seen(self) -> int | None:
        return None if self.total_steps is None else self.total_steps * self.layout.global_batch * self.runs

    @property
    def hours_unit(self) -> str:
        """What the hours are hours of: the device the training rate was measured on."""
        return "CPU-hours" if self.throughput is not None and self.throughput.on_cpu else "device-hours"

    @property
    def device_hours(self) -> float | None:
        """Training only (evaluation excluded), assuming throughput per device holds on every device."""
        if self.throughput is None or self.samples_seen is None:
            return None
        return self.samples_seen / self.throughput[0] / 3600


# --------------------------------------------------------------------------------------------- counting
def _csv_rows(path: Path) -> int:
    with path.open("rb") as f:
        return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1)


def count_pairs(source: Any) -> Count:
    """Pairs of a training source: counted when the data is there, else the source's expected-count key."""
    if isinstance(source, FashionMNISTPairs):
        n = FASHION_MNIST[source.split]
        return Count(min(n, source.max_samples or n), f"Fashion-MNIST {source.split} split")
    if isinstance(source, CsvPairs):
        path = Path(source.path)
        if path.is_file():
            n = _csv_rows(path)
            return Count(min(n, source.max_samples or n), f"rows counted in {path}")
        if source.expected_pairs is not None:
            return Count(source.expected_pairs, "expected_pairs (the CSV is not there yet)")
        return Count(None, f"{path} does not exist and expected_pairs is not set")
    if isinstance(source, WebDatasetPairs) and source.epoch_samples is not None:
        return Count(source.epoch_samples, "epoch_samples")
    if isinstance(source, WebDatasetPairs) and source.access == "index":
        return Count(_shard_samples(source), "samples counted in the shards")
    return Count(None, "streamed shards are not counted; set epoch_samples")


def _shard_samples(source: WebDatasetPairs) -> int | None:
    """Samples with a non-empty caption member in local .tar shards (headers only: no image is read)."""

    keys = set()
    for url in shard_urls(source.urls):
        if not Path(url).is_file():
            return None
        with tarfile.open(url) as tar:
            captions = (m for m in tar if m.name.endswith("." + source.caption_key) and m.size)
            keys |= {(url, m.name.partition(".")[0]) for m in captions}
    return len(keys)


def count_eval_images(source: Any) -> Count:
    if isinstance(source, FashionMNISTLabelled):
        n = FASHION_MNIST[source.split]
        return Count(min(n, source.max_samples or n), f"Fashion-MNIST {source.split} split")
    path = Path(source.labels if isinstance(source, ImageNetLabelled) else getattr(source, "path", ""))
    cap = source.max_samples
    if isinstance(source, (ImageNetLabelled, CsvLabelled)) and path.is_file():
        n = _csv_rows(path) + (isinstance(source, ImageNetLabelled) and path.suffix != ".csv")  # no header
        return Count(min(n, cap or n), f"counted in {path}")
    if isinstance(source, ImageNetLabelled):
        return Count(min(IMAGENET_VAL, cap or IMAGENET_VAL), "ImageNet-1K val (the labels file is not there yet)")
    return Count(cap, "data.eval.max_samples" if cap else "not counted")


def missing_paths(cfg: ExperimentConfig, *, train_data: bool = True) -> list[str]:
    """Warnings for data and eval paths that do not exist, naming the key."""
    keys: dict[str, str | None] = {
        "data.eval.labels": getattr(cfg.data.eval, "labels", None),
        "data.eval.folder": getattr(cfg.data.eval, "folder", None),
        "data.eval.path": getattr(cfg.data.eval, "path", None),
        "data.eval.root": getattr(cfg.data.eval, "root", None),
        "eval.retrieval.path": cfg.eval.retrieval.path if cfg.eval.retrieval else None,
    }
    if train_data:
        keys["data.train.path"] = getattr(cfg.data.train, "path", None)
        keys["data.train.root"] = getattr(cfg.data.train, "root", None)
    if cfg.poison is not None:
        keys["poison.source.path"] = getattr(cfg.poison.source, "path", None)
    return [f"{key}: {value} does not exist" for key, value in keys.items() if value and not Path(value).exists()]


# ------------------------------------------------------------------------------------------- the model
def model_facts(model: ModelConfig) -> tuple[int, int]:
    """(parameters, input image size) of a model, built once on the CPU at random init."""
    return _model_facts(model.model_copy(update={"checkpoint": None, "pretrained": None}).model_dump_json())


def checkpoint_warnings(model: ModelConfig) -> list[str]:
    """create_model's refusal of ``model.checkpoint`` (another activation than the model's, or an unreadable
    file), said before the run; nothing while the checkpoint is not written yet (a study's pre-training)."""

    if model.checkpoint is None or not Path(model.checkpoint).exists():
        return []
    try:
        read_model_checkpoint(model, model_name(model))
    except FileNotFoundError:  # a run directory with no checkpoint in it yet
        return []
    except CheckpointError as err:
        return [f"model.checkpoint: {err}"]
    except ConfigError as err:
        return [str(err)]
    return []


@cache
def _model_facts(model_json: str) -> tuple[int, int]:

    bundle = create_model(ModelConfig.model_validate_json(model_json))
    return sum(p.numel() for p in bundle.model.parameters()), bundle.image_size


def launcher_processes(launcher: list[str]) -> int:
    """Processes a launcher starts: torchrun's ``--nproc_per_node`` (1 when absent or not a number)."""
    for i, arg in enumerate(launcher):
        name, _, value = arg.partition("=")
        if name in ("--nproc_per_node", "--nproc-per-node"):
            value = value or (launcher[i + 1] if i + 1 < len(launcher) else "")
            return int(value) if value.isdigit() else 1
    return 1


# ------------------------------------------------------------------------------------------------ stages
def plan_stage(
    name: str,
    cfg: ExperimentConfig,
    processes: int,
    launcher: str,
    pairs: Count,
    *,
    runs: int = 1,
    at_once: int = 1,
    poison_image_size: int | None = None,
    warnings: list[str] | None = None,
    bench_dirs: tuple[Path, ...] | None = None,
    cores: int | None = None,
) -> Stage:
    """The plan of one experiment config run ``runs`` times on ``processes`` processes, on a node with
    ``cores`` CPU cores (default: this machine's), with the rates measured in ``bench_dirs`` (default:
    :func:`measurement_dirs`)."""
    bench_dirs = bench_dirs or measurement_dirs()
    layout = batch_layout(cfg.train, processes)
    params, image_size = model_facts(cfg.model)
    eval_images = count_eval_images(cfg.data.eval)
    if cfg.eval.attack is not None and eval_images.n is not None:
        eval_images = Count(2 * eval_images.n, f"{eval_images.source}; clean + triggered")
    evaluations = cfg.train.epochs + 1 if cfg.eval.every_epoch else 1
    kept = min(cfg.train.keep_last or cfg.train.epochs, cfg.train.epochs)
    cost = WeightedObjective(cfg.objective).cost()
    stage = Stage(
        name, processes, launcher, layout, pairs, cfg.train.epochs, cfg.train.warmup_steps, eval_images,
        evaluations, runs, at_once, kept * params * CHECKPOINT_BYTES_PER_PARAM * runs,
        find_throughput(cfg.model.name, cfg.train.precision, (measured_key(cfg.objective), device_kind(cost)),
                        bench_dirs),
        [*(warnings or []), *checkpoint_warnings(cfg.model)], cost=cost,
    )  # fmt: skip
    node_cores = cores or os.cpu_count() or 1
    stage.feed, feed_warnings = feed_report(cfg, cost, processes, stage.throughput, node_cores, bench_dirs, image_size)
    stage.warnings += feed_warnings
    if stage.total_steps and cfg.train.warmup_steps > WARMUP_WARN_SHARE * stage.total_steps:
        stage.warnings.append(
            f"train.warmup_steps={cfg.train.warmup_steps} is {cfg.train.warmup_steps / stage.total_steps:.0%} "
            f"of the {stage.total_steps:,} steps (over {WARMUP_WARN_SHARE:.0%})"
        )
    if poison_image_size is not None and poison_image_size != image_size:
        stage.warnings.append(
            f"poison.image_size={poison_image_size} but {cfg.model.name} takes {image_size} px: the eval trigger "
            "is made at the model's size, so it would be another trigger than the one trained on"
        )
    return stage


def plan_experiment(
    cfg: ExperimentConfig, gpus: int = 1, bench_dirs: tuple[Path, ...] | None = None, cores: int | None = None
) -> list[Stage]:
    """The plan of one run; data that `poison` is still to write is counted from the poison source."""
    pairs, poison = count_pairs(cfg.data.train), cfg.poison
    written_by_poison = poison is not None and Path(getattr(cfg.data.train, "path", "")).parent == Path(poison.output)
    if pairs.n is None and written_by_poison:
        source = count_pairs(poison.source)
        pairs = Count(source.n, f"poison.source: {source.source}")
    stage = plan_stage(
        f"train {cfg.name}", cfg, gpus, f"{gpus} process(es)", pairs,
        poison_image_size=poison.image_size if poison else None,
        warnings=missing_paths(cfg, train_data=not written_by_poison), bench_dirs=bench_dirs, cores=cores,
    )  # fmt: skip
    return [stage]


def _pretrain_stage(
    study: StudyConfig, tag: str, seed: int | None, gpus: int | None, bench_dirs: tuple[Path, ...], cores: int | None,
    drop_percent: float | None = None,
) -> Stage:  # fmt: skip
    """Pre-training ``tag`` (under ``seed``; or again, after the detection stage drops ``drop_percent`` %)."""

    cfg = load_config(study.base, pretrain_overrides(study, tag, seed))
    if cfg.poison is None:
        raise ConfigError(f"study {study.name}: its base config '{study.base}' has no poison section")
    counted = count_pairs(cfg.poison.source)
    pairs = Count(counted.n, f"poison.source: {counted.source}")
    # under the fine-tuning threat model the poisoned model starts from the clean one: the plan says from which
    train = "pre-train" if study.finetune is None else f"fine-tune (from {cfg.model.checkpoint})"
    name = f"{train} {run_name(tag, seed)}"
    if drop_percent is not None:
        kept = None if counted.n is None else counted.n - round(counted.n * drop_percent / 100)
        pairs = Count(kept, f"{pairs.source}, less the {drop_percent:g} % the detection stage drops")
        name = f"detect with {tag}, drop {drop_percent:g} % of the pairs, {train} {run_name(tag, filtered=True)}"
    processes = gpus or launcher_processes(study.pretrain_launcher)
    launcher = f"--gpus {gpus}" if gpus else " ".join(study.pretrain_launcher) or "python"
    stage = plan_stage(
        name, cfg, processes, launcher, pairs, poison_image_size=cfg.poison.image_size,
        warnings=missing_paths(cfg, train_data=False), bench_dirs=bench_dirs, cores=cores,
    )  # fmt: skip
    stage.where = Where(run_dir=study.study_dir / "pretrain" / run_name(tag, seed, drop_percent is not None))
    return stage


def _clean_stage(
    study: StudyConfig, sweep: SweepConfig, name: str, runs: int, at_once: int, bench_dirs: tuple[Path, ...],
    cores: int | None, run_in: list[Any] | None = None,
) -> Stage:  # fmt: skip
    """The cleaning runs of ``sweep``'s recipe, run in the sweeps ``run_in`` (default: ``sweep`` itself)."""
    pre = load_config(study.base, pretrain_overrides(study, Path(sweep.run).name))
    tree, origin = with_recipe(pre.model_dump(mode="json"), sweep.defense)
    cfg = validate_tree(tree, as_overrides(sweep.overrides), origin)
    cleaning = pre.poison.cleaning if pre.poison else None
    pairs = Count(
        cleaning.size + cleaning.poisons if cleaning else None,
        "poison.cleaning.size (+ poisons)" if cleaning else "no poison.cleaning set",
    )
    launcher = " ".join(study.clean_launcher) or "python"
    processes = launcher_processes(study.clean_launcher)
    cfg = cfg.model_copy(update={"poison": pre.poison})  # the cleaning set's images are the poisoning's, as sized
    stage = plan_stage(
        name, cfg, processes, launcher, pairs, runs=runs, at_once=at_once, bench_dirs=bench_dirs, cores=cores
    )
    stage.where = Where(sweeps=tuple((s.name, s.storage_url) for s in run_in or [sweep]))
    stage.stops_early = sweep.early_stop is not None and run_in is None  # a seed's one setting runs to its end
    return stage


def plan_study(
    study: StudyConfig, gpus: int | None = None, bench_dirs: tuple[Path, ...] | None = None, cores: int | None = None
) -> list[Stage]:
    """The study's stages in the order it runs them: its clean model, if it trains one; then pre-training per
    objective, one cleaning stage per (model, defense) sweep, the seeds axis (pre-training again, and each
    selected setting, per seed) and the detection stage (pre-training again on the filtered data), once per
    attack of an attack axis. With ``gpus``, the study runs on that many devices; else on its own
    (``devices``, or those this machine sees)."""
    bench_dirs = bench_dirs or measurement_dirs()
    stages = []
    if needs_clean_model_run(study):
        stages.append(_pretrain_stage(clean_model_study(study), CLEAN_MODEL, None, gpus, bench_dirs, cores))
    if not study.attacks:
        return stages + _study_stages(study, gpus, bench_dirs, cores)
    for attack, sub in attack_studies(study).items():
        for stage in _study_stages(sub, gpus, bench_dirs, cores):
            stage.name = f"[{attack}] {stage.name}"
            stages.append(stage)
    return stages


def _study_stages(study: StudyConfig, gpus: int | None, bench_dirs: tuple[Path, ...], cores: int | None) -> list[Stage]:
    """The stages of one study (of one attack, with an attack axis)."""
    stages = [_pretrain_stage(study, tag, None, gpus, bench_dirs, cores) for tag in study.pretrain]
    poison = load_config(study.base, stage_overrides(study)).poison
    if stages and poison is not None and poison.optimize is not None:
        stages[0].before = patch_optimization(poison.optimize)
    devices = [str(i) for i in range(gpus)] if gpus else resolve_devices(study.devices)
    slots = len(devices) // study.devices_per_trial
    at_once = min(trial_workers(study, devices), slots) if slots else trial_workers(study, devices)
    sweeps = sweep_configs(study)
    stages += [_clean_stage(study, s, f"clean {s.name}", budget(s), at_once, bench_dirs, cores) for s in sweeps]
    if study.seeds:
        base = base_seed(study)
        others = other_seeds(study, base)
        stages += [
            _pretrain_stage(study, tag, seed, gpus, bench_dirs, cores)
            for tag in study.seeded_pretrain
            for seed in others
        ]
        wanted = study.seeds.defenses or list(study.defenses)
        stages += [
            _clean_stage(study, s, f"clean {s.name}, its selected setting at seeds {others}", len(others), 1,
                         bench_dirs, cores, [seed_sweep_home(study, s, seed) for seed in others])
            for s in sweeps if Path(s.defense).stem in wanted and Path(s.run).name in study.seeded_pretrain
        ]  # fmt: skip
    if study.filter and study.filter.retrain:
        stages += [
            _pretrain_stage(study, tag, None, gpus, bench_dirs, cores, drop_percent=study.filter.drop_percent)
            for tag in study.filter.pretrain or study.pretrain
        ]
    return stages


def patch_optimization(opt: PatchOptimization) -> str:
    """What optimising a BadCLIP patch costs, in the surrogate's passes (not measured: no benchmark of it)."""
    steps = opt.num_pairs // opt.batch_size * opt.epochs
    return (
        f"BadCLIP's patch: {opt.epochs} epochs × {opt.num_pairs // opt.batch_size:,} steps = {steps:,} steps, each "
        f"the frozen surrogate's image tower forward and backward on {opt.batch_size} patched images and forward "
        f"on their clean copies ({opt.surrogate})"
    )


# ------------------------------------------------------------------------------------------------ output
def _cost(cost: ObjectiveCost | None) -> str:
    if cost is None:
        return "?"
    views = ", ".join(sorted(cost.augmented)) or "none"
    return (f"{cost.image_passes} image + {cost.text_passes} text encoder passes per pair; "
            f"augmented views the loader makes: {views}")  # fmt: skip


def _n(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_plan(stages: list[Stage]) -> str:
    lines: list[str] = []
    total_hours, unknown, cleaning_epochs = 0.0, False, 0
    for s in stages:
        lay = s.layout
        warm = f"{s.warmup_steps / s.total_steps:.1%}" if s.total_steps else "?"
        hours = s.device_hours
        total_hours += hours or 0.0
        unknown |= hours is None
        lines += [f"== before {s.name}: {s.before}"] if s.before else []
        lines += [
            f"== {s.name}",
            f"  processes      {s.processes} ({s.launcher})"
            + (f"; {s.runs} runs, {s.at_once} at once" if s.runs > 1 else ""),
            f"  batch          global {lay.global_batch:,} = {lay.world_size} × {lay.per_process:,} per process; "
            f"micro-batch (BatchNorm group) {lay.micro_batch:,}, accumulation {lay.accum_steps}",
            f"  pairs          {_n(s.pairs.n)} ({s.pairs.source})",
            f"  objective      {_cost(s.cost)}",
            f"  steps          {_n(s.steps_per_epoch)} per epoch × {s.epochs} epochs = {_n(s.total_steps)}; "
            f"warm-up {s.warmup_steps:,} steps = {warm}",
            f"  samples seen   {_n(s.samples_seen)}" + (" (all runs)" if s.runs > 1 else ""),
            f"  evaluations    {s.evaluations_per_run} per run × {_n(s.eval_images.n)} images ({s.eval_images.source})",
            f"  checkpoints    {_bytes(s.checkpoint_bytes)} kept on disk" + (" (all runs)" if s.runs > 1 else ""),
            f"  {s.hours_unit:<15}"
            + (f"{hours:,.1f} training (from {s.throughput.source})" if hours is not None and s.throughput else
               "no measurement for this model and precision under benchmarks/results"),
        ]  # fmt: skip
        lines += [f"  data path      {s.feed}"] if s.feed else []
        if s.cleaning:
            cleaning_epochs += s.runs * s.epochs
            sooner = " at most (early stopping ends hopeless runs sooner)" if s.stops_early else ""
            lines.append(f"  cleaning cost  {s.runs} runs × {s.epochs} epochs = {s.runs * s.epochs:,} epochs{sooner}")
        lines += [f"  WARNING {w}" for w in s.warnings]
    units = {s.hours_unit for s in stages}
    lines.append(
        f"== total: {total_hours:,.1f} {units.pop() if len(units) == 1 else 'device-hours'} of training"
        + (" (stages without a measurement not counted)" if unknown else "")
        + (f"; {cleaning_epochs:,} cleaning epochs" if cleaning_epochs else "")
    )
    return "\n".join(lines)


def is_study(tree: dict[str, Any]) -> bool:
    return "pretrain" in tree and "defenses" in tree
