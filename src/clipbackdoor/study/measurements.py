"""Where measured rates live and how a plan finds one: the device's training rate per objective, read from the
benchmark JSONs of ``benchmarks/bench_gpu.py`` / ``bench_train.py`` (the loader's rate is ``data_rate``'s).

The JSONs plan reads ship with the package (``measured/``, copies of benchmarks/results kept equal by a test),
so an installed wheel plans with them; a user's own GPU measurement is read first (``plan --measured DIR``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from clipbackdoor.objectives import ObjectiveCost, split_term

MEASURED_PASSES = {1: "mmcl", 2: "mmcl+ssl"}  # encoder passes per pair -> the benchmarks' objective key
# The measured rates shipped with the package (copies of benchmarks/results' files that plan reads; a test keeps
# them equal), so that an installed wheel plans with them too.
PACKAGED_MEASUREMENTS = Path(__file__).resolve().parents[1] / "measured"
MEASURED_ENV = "CLIPBACKDOOR_MEASURED"


def measurement_dirs(given: Path | None = None) -> tuple[Path, ...]:
    """Where measured rates are looked up, the first that has one winning: a folder the user names
    (``plan --measured DIR`` or ``$CLIPBACKDOOR_MEASURED``: their own GPU's benchmark), ``benchmarks/results``
    under the working directory (a fresh run of this repo's benchmarks), then the rates shipped with the package."""
    named = given or (Path(os.environ[MEASURED_ENV]) if os.environ.get(MEASURED_ENV) else None)
    return (*((named,) if named else ()), Path("benchmarks/results"), PACKAGED_MEASUREMENTS)


class Throughput(NamedTuple):
    """A measured training rate: samples/s per device, where it was read, and the device (``cpu``, ``cuda``)."""

    rate: float
    source: str
    device: str

    @property
    def on_cpu(self) -> bool:
        """Measured on a CPU: the plan's hours are CPU-hours, and its loader shares the cores with training."""
        return self.device == "cpu"


def find_throughput(
    model: str, precision: str, objective_kind: str | tuple[str | None, ...], dirs: tuple[Path, ...]
) -> Throughput | None:
    """Samples/s per device for (model, precision, objective) from a benchmark JSON, preferring GPU files: the
    model's rate on tensors already on the device (the loader's rate is the data-path line's). Several kinds
    are tried in order: the objective's own measurement (its recipe's batch), else one of as many passes."""
    kinds = [k for k in ((objective_kind,) if isinstance(objective_kind, str) else objective_kind) if k]
    # the first folder that has a measurement wins; within one, GPU files first
    files = [
        f for d in dirs if d.is_dir() for f in sorted(d.glob("*.json"), key=lambda f: not f.name.startswith("gpu"))
    ]
    measured = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("results", {}), dict):
            continue  # another benchmark's file (k-means, sweeps): no training throughput in it
        setup = data.get("setup", {})
        if setup.get("model") == model and setup.get("precision") == precision:
            measured.append((path, setup, data.get("results", {}).get("per_objective", {})))
    for kind in kinds:
        for path, setup, per_objective in measured:
            rates = per_objective.get(kind, {})
            # the device's own rate: whether the loader keeps up is the data-path line's question (data_rate.py)
            rate = rates.get("synthetic_samples_per_s") or rates.get("files_samples_per_s")
            if rate:
                device = str(setup.get("device", "?"))
                return Throughput(float(rate), f"{path} ({device}, {kind})", device)
    return None


def measured_key(terms: dict[str, Any]) -> str:
    """How benchmarks name an objective's own measurement: its terms, joined (``mmcl+ssl``, ``roclip``)."""
    return "+".join(sorted(name for name, spec in terms.items() if split_term(name, spec)[0] != 0))


def device_kind(cost: ObjectiveCost) -> str | None:
    """The measured training step with as many encoder passes per pair: ``mmcl`` one, ``mmcl+ssl`` two
    (originals and views); None for another count (nothing measured)."""
    return MEASURED_PASSES.get(max(cost.image_passes, cost.text_passes))
