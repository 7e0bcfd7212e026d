"""Can the loader feed the devices? The data path's measured rate per CPU core against the training rate.

At the paper's scale the CPUs that decode, resize and augment images limit a run before the GPUs do: RN50
trains at thousands of samples/s per GPU while one core turns out tens to hundreds. ``plan`` uses the rates
``benchmarks/bench_data.py`` measured (``benchmarks/results/data.json``: per core, per objective, for raw
web JPEGs and for img2dataset's 256 px ones) to say how many loader cores each process has, what they can
deliver, and to warn when that is less than the device consumes.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clipbackdoor.config import CsvPairs, ExperimentConfig, FashionMNISTPairs
from clipbackdoor.objectives import ObjectiveCost
from clipbackdoor.study.measurements import Throughput

SMALL_SOURCE_SIDE = 320  # a median shorter side at most this: img2dataset-resized (256 px), not raw downloads
PEEK_ROWS = 32


@dataclass(frozen=True)
class DataRate:
    """Samples (MMCL) or pairs (MMCL+SSL) per second per loader core, and where it was measured."""

    per_core: float
    regime: str
    source: str
    size: int  # the side the benchmark resized to (224): a rate for that output size only


def loader_kind(cost: ObjectiveCost) -> str:
    """The measured data path that does what this objective's loader does: ``mmcl`` decodes and resizes each
    image; ``mmcl+ssl`` also makes an AutoAugment view and an EDA caption; ``simclr`` SimCLR-style views and EDA
    captions (whatever the loss then encodes)."""
    if not cost.augmented:
        return "mmcl"
    return "simclr" if cost.image_policy == "simclr" else "mmcl+ssl"


def find_data_rate(objective_kind: str, regime: str, decode: str, dirs: tuple[Path, ...]) -> DataRate | None:
    """The measured per-core rate for this objective and size regime (CSV source) from a ``data.json``."""
    for path in (f for d in dirs if d.is_dir() for f in sorted(d.glob("data*.json"))):  # the first dir first
        try:
            data = json.loads(path.read_text())
            entry = data["regimes"][regime][objective_kind]
            rate = entry["decode_gpu"]["loader_per_core"] if decode == "gpu" else _ours(entry["csv"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
        return DataRate(float(rate), regime, str(path), int(data.get("size", 224)))
    return None


def _ours(entry: dict) -> float:
    return next(v for k, v in entry["ours"].items() if k.endswith("_per_s_per_core"))


def size_regime(cfg: ExperimentConfig) -> tuple[str, str]:
    """``raw`` or ``256px`` for the training images, and why: read off a few image headers of a CSV source,
    or of the source poisoning will copy them from when the CSV is its output, not written yet (a study's plan
    before it poisons); streamed shards and missing data are taken as raw downloads (the slower case)."""
    source, poison = cfg.data.train, cfg.poison
    unwritten = isinstance(source, CsvPairs) and not Path(source.path).is_file()
    if unwritten and poison is not None and Path(source.path).parent.resolve() == Path(poison.output).resolve():
        if isinstance(poison.source, FashionMNISTPairs):  # written as 28 px PNGs, poisons at poison.image_size
            return "256px", "Fashion-MNIST's 28 px images, as poisoning will write them"
        if isinstance(poison.source, CsvPairs) and Path(poison.source.path).is_file():
            regime, why = _csv_regime(poison.source)  # clean rows link to the source's images
            return regime, f"{why} of {poison.source.path}, which poisoning links to"
    if not isinstance(source, CsvPairs) or not Path(source.path).is_file():
        return "raw", "assumed: not a CSV of files on disk"
    return _csv_regime(source)


def _csv_regime(source: CsvPairs) -> tuple[str, str]:
    """``raw`` or ``256px`` from the median shorter side of the first images a CSV names."""
    root = Path(source.root) if source.root else Path(source.path).parent
    sides = []
    with Path(source.path).open(newline="", encoding="utf-8", errors="replace") as f:
        for i, row in enumerate(csv.DictReader(f, delimiter=source.delimiter)):
            if i >= PEEK_ROWS:
                break
            try:
                with Image.open(root / row[source.image_column]) as image:
                    sides.append(min(image.size))
            except (OSError, KeyError, ValueError):
                continue
    if not sides:
        return "raw", "assumed: no readable image among the first rows"
    median = statistics.median(sides)
    regime = "256px" if median <= SMALL_SOURCE_SIDE else "raw"
    return regime, f"median shorter side {median:.0f} px over {len(sides)} images"


def feed_report(
    cfg: ExperimentConfig,
    cost: ObjectiveCost,
    processes: int,
    throughput: Throughput | None,
    cores: int,
    dirs: tuple[Path, ...],
    image_size: int,
) -> tuple[str | None, list[str]]:
    """A line for the plan and warnings: loader cores per process × rate per core for what the objective's
    loader makes (``cost``), against the measured training rate per device (``throughput``); nothing for
    in-memory data (Fashion-MNIST). A rate measured on the CPU is spoken of as the CPU's: there the loader and
    training share the cores, and no GPU waits. A rate measured at another output size than the model's
    ``image_size`` (the benchmark's 224 px for a 32 px model) is shown, not compared: resizing, cropping and the
    views cost with the output's pixels."""
    if isinstance(cfg.data.train, FashionMNISTPairs):
        return None, []
    kind = loader_kind(cost)
    regime, why = size_regime(cfg)
    rate = find_data_rate(kind, regime, cfg.data.decode, dirs)
    workers = cfg.data.num_workers
    warnings = []
    if processes * max(workers, 1) > cores:
        warnings.append(
            f"data.num_workers={workers} on each of {processes} processes wants {processes * workers} loader cores; "
            f"the node has {cores} (plan --cores)"
        )
    if rate is None:
        return f"no data-path measurement for {kind} on {regime} JPEGs (benchmarks/bench_data.py)", warnings
    usable = min(max(workers, 1), max(cores // processes, 1))
    feed = usable * rate.per_core
    line = (
        f"{usable} loader core(s) per process × {rate.per_core:,.0f}/s per core ({kind}, {regime} JPEGs: {why}; "
        f"data.decode={cfg.data.decode}) = {feed:,.0f}/s"
    )
    if rate.size != image_size:
        line += f", measured at {rate.size} px: not compared with training at {image_size} px"
    elif throughput is not None:
        device_rate, device = throughput.rate, "the CPU" if throughput.on_cpu else "the device"
        line += f" against {device_rate:,.0f}/s {device} trains at"
        needed = -(-device_rate // rate.per_core)
        if feed < device_rate and throughput.on_cpu:
            warnings.append(
                f"the loader feeds {feed:,.0f}/s per process but the CPU trains at {device_rate:,.0f}/s: training "
                f"will wait for the loader, which shares the CPU's cores with it (~{needed:.0f} loader cores would "
                "keep up: data.num_workers on a machine with more cores)"
            )
        elif feed < device_rate:
            warnings.append(
                f"the loader feeds {feed:,.0f}/s per process but the device trains at {device_rate:,.0f}/s: the GPUs "
                f"will wait. It needs ~{needed:.0f} cores per process (data.num_workers, a node with more cores), "
                + ("or data.decode: gpu" if cfg.data.decode == "cpu" else "or faster storage")
            )
    return f"{line} (from {rate.source})", warnings
