"""End-to-end runs on the real Fashion-MNIST (minutes each): `make test-slow`, not CI."""

from pathlib import Path

import pytest

from clipbackdoor.cli import main
from clipbackdoor.data import fashion_mnist
from clipbackdoor.train.metrics import read_records

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (fashion_mnist.DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(),
        reason="Debian's dataset-fashion-mnist is not installed",
    ),
]


def test_one_epoch_on_poisoned_fashion_mnist_implants_the_backdoor(tmp_path: Path) -> None:
    """The demo's attack, one epoch of MMCL: measured CA 82.35 %, ASR 99.12 % (README)."""
    data = tmp_path / "data"
    overrides = [
        f"output_dir={tmp_path}",
        "name=slow",
        "train.epochs=1",
        "train.progress=false",
        f"poison.output={data}",
        f"data.train={{source: csv, path: {data}/train.csv}}",
        f"eval.attack={data}/manifest.json",
    ]
    assert main(["poison", "demo", *overrides]) == 0
    assert main(["pretrain", "demo", *overrides]) == 0
    last = [r for r in read_records(tmp_path / "slow" / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert last["eval/clean_top1"] > 75
    assert last["eval/asr_top1"] > 90


def test_reduced_decoding_keeps_a_checkpoints_accuracy(tmp_path: Path) -> None:
    """The data-path tolerance on a measured number: a 1-epoch MMCL model scores the same CA (±0.5 points)
    on 10x-upscaled Fashion-MNIST JPEGs decoded in full and through the loader (reduced scale, box resize)."""
    import json
    import subprocess
    import sys

    overrides = [f"output_dir={tmp_path}", "name=clean", "train.epochs=1", "train.progress=false", "poison=null",
                 "data.train={source: fashion-mnist}", "eval.attack=null", "eval.every_epoch=false"]  # fmt: skip
    assert main(["pretrain", "demo", *overrides]) == 0
    script = Path(__file__).parents[1] / "benchmarks" / "check_decode_ca.py"
    name = f"decode_ca_test_{tmp_path.name}"
    subprocess.run([sys.executable, str(script), str(tmp_path / "clean"), "--images", "3000", "--out-name", name],
                   check=True)  # fmt: skip
    result_path = script.parent / "results" / f"{name}.json"
    result = json.loads(result_path.read_text())
    result_path.unlink()
    assert result["ca_reference"] >= 70 and abs(result["ca_gap_points"]) <= 0.5, result
