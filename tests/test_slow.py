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
