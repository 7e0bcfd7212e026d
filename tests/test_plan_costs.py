"""What a plan counts comes from the objective and the measurements, wherever the package is installed: encoder
passes and the loader's views from the objective itself, measured rates shipped as package data, and trial
workers defaulting to the device slots."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from clipbackdoor.cli import main
from clipbackdoor.objectives import ObjectiveCost, WeightedObjective
from clipbackdoor.resolve import load_config
from clipbackdoor.study.config import load_study_config
from clipbackdoor.study.measurements import PACKAGED_MEASUREMENTS, device_kind, measurement_dirs
from clipbackdoor.study.plan import plan_experiment, plan_study

ROOT = Path(__file__).resolve().parents[1]
VIEWS = frozenset({"image_aug", "text_aug"})
AA, SIMCLR = "autoaugment-imagenet", "simclr"


@pytest.mark.parametrize(
    ("terms", "cost", "device", "loader"),
    [
        ({"mmcl": 1.0}, ObjectiveCost(1, 1, frozenset()), "mmcl", "mmcl"),
        ({"mmcl": 1.0, "ssl": 1.0}, ObjectiveCost(2, 2, VIEWS, AA), "mmcl+ssl", "mmcl+ssl"),
        ({"roclip": 1.0}, ObjectiveCost(1, 1, VIEWS, SIMCLR), "mmcl", "simclr"),  # CLIP's compute on its views
        ({"safeclip": 1.0}, ObjectiveCost(2, 2, VIEWS | {"image_aug2", "text_aug2"}, SIMCLR), "mmcl+ssl", "simclr"),
        ({"mmcl": 1.0, "ssl": {"weight": 1.0, "image": 1.0, "text": 0.0}},
         ObjectiveCost(2, 1, frozenset({"image_aug"}), AA), "mmcl+ssl", "mmcl+ssl"),
    ],
)  # fmt: skip
def test_an_objective_states_its_own_cost(terms: dict, cost: ObjectiveCost, device: str, loader: str) -> None:
    from clipbackdoor.study.data_rate import loader_kind

    got = WeightedObjective(terms).cost()
    assert got == cost
    assert (device_kind(got), loader_kind(got)) == (device, loader)


def _bench(folder: Path, mmcl: float, ssl: float) -> Path:
    folder.mkdir()
    gpu = {"setup": {"model": "RN50", "precision": "bf16", "device": "cuda"},
           "results": {"per_objective": {"mmcl": {"synthetic_samples_per_s": mmcl},
                                         "mmcl+ssl": {"synthetic_samples_per_s": ssl}}}}  # fmt: skip
    (folder / "gpu_rn50_bf16.json").write_text(json.dumps(gpu))
    return folder


def test_roclip_trains_at_clips_rate_and_safeclip_at_mmcl_ssls(tmp_path: Path) -> None:
    bench = _bench(tmp_path / "bench", 1000.0, 500.0)
    rates = {}
    for name in ("mmcl", "roclip", "safeclip"):
        (stage,) = plan_experiment(load_config("cc3m", [f"objective={{{name}: 1.0}}"]), gpus=8, bench_dirs=(bench,))
        rates[name] = stage.throughput[0]
    assert rates == {"mmcl": 1000.0, "roclip": 1000.0, "safeclip": 500.0}


def test_the_packaged_measurements_are_the_benchmarks_results() -> None:
    shipped = sorted(p.name for p in PACKAGED_MEASUREMENTS.glob("*.json"))
    assert {"data.json", "gpu_rn50_bf16.json"} <= set(shipped)
    _, mismatch, errors = filecmp.cmpfiles(
        PACKAGED_MEASUREMENTS, ROOT / "benchmarks" / "results", shipped, shallow=False
    )
    assert mismatch == errors == [], f"stale copies {mismatch + errors}: run `make measurements`"


def test_a_named_folder_is_read_first_then_the_working_directory_then_the_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert measurement_dirs() == (Path("benchmarks/results"), PACKAGED_MEASUREMENTS)
    monkeypatch.setenv("CLIPBACKDOOR_MEASURED", str(tmp_path / "env"))
    assert measurement_dirs()[0] == tmp_path / "env"
    assert measurement_dirs(tmp_path / "given")[0] == tmp_path / "given"
    # from another directory the shipped H200 measurement still gives device-hours
    (stage,) = plan_experiment(load_config("cc3m", []), gpus=8)
    assert stage.throughput is not None and str(PACKAGED_MEASUREMENTS) in stage.throughput[1]
    bench = _bench(tmp_path / "mine", 4000.0, 2000.0)
    assert main(["plan", "cc3m", "--gpus", "8", "--measured", str(bench)]) == 0
    (stage,) = plan_experiment(load_config("cc3m", []), gpus=8, bench_dirs=measurement_dirs(bench))
    assert stage.throughput[0] == 4000.0


def test_trial_workers_default_to_the_device_slots() -> None:
    stages = plan_study(load_study_config("study-cc3m"), gpus=8)
    assert {s.at_once for s in stages if s.cleaning} == {8}
    assert {s.at_once for s in plan_study(load_study_config("study-cc3m", ["devices_per_trial=2"]), gpus=8)
            if s.cleaning} == {4}  # fmt: skip
    assert {s.at_once for s in plan_study(load_study_config("study-cc3m", ["workers=3"]), gpus=8) if s.cleaning} == {3}
    assert {s.at_once for s in plan_study(load_study_config("study-cc3m", ["devices=[]"])) if s.cleaning} == {1}
