"""End-to-end runs on the real Fashion-MNIST (minutes each): `make test-slow`, not CI."""

import json
from pathlib import Path

import pytest

from clipbackdoor.cli import main
from clipbackdoor.data import fashion_mnist
from clipbackdoor.metrics_log import read_records
from clipbackdoor.resolve import load_config

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


def test_the_small_study_recipe_in_miniature(tmp_path: Path) -> None:
    """configs/study-fmnist.yaml itself, shrunk only in sizes (600 pairs, 200 eval images, one grid point):
    five pre-trainings (RoCLIP, its control and SafeCLIP not cleaned), sweeps, the seeds axis (every pre-training),
    detect-filter-retrain, report."""
    sizes = ("{'poison.source': {source: fashion-mnist, split: train, max_samples: 600}, 'poison.num_poisons': 18, "
             "'poison.cleaning': {size: 128, poisons: 0}, 'train.epochs': 2, 'train.warmup_steps': 2, "
             "'train.batch_size': 64, "
             "'data.eval': {source: fashion-mnist, split: test, max_samples: 200}}")  # fmt: skip
    grid = [f"defenses.{d}.space.train\\.lr.grid=[1.0e-3]" for d in ("mmcl-only", "ssl-only", "cleanclip")]
    args = [f"output_dir={tmp_path}", "workers=2", f"overrides={sizes}", *grid,
            "defenses.cleanclip.space.defense\\.ssl.grid=[1.0]"]  # fmt: skip
    assert main(["study", "study-fmnist", *args]) == 0
    root = tmp_path / "study-fmnist"
    report = (root / "report" / "report.md").read_text()
    for heading in ("## Pre-trained on the poisoned data", "## Detect, filter, pre-train again",
                    "## Spread over training seeds"):  # fmt: skip
        assert heading in report
    tags = ("mmcl", "mmcl-ssl", "roclip", "roclip-control", "safeclip")
    assert {p.name for p in (root / "pretrain").iterdir() if p.is_dir()} == {
        *tags, *(f"{t}-seed{s}" for t in tags for s in (1, 2)), "mmcl-filtered", "mmcl-ssl-filtered",
    }  # fmt: skip
    assert not any(p.name.startswith(("roclip", "safeclip")) for p in (root / "sweeps").iterdir())
    safeclip = [json.loads(x) for x in (root / "pretrain" / "safeclip" / "metrics.jsonl").read_text().splitlines()]
    splits = [r for r in safeclip if "safeclip/poison_safe_share" in r]
    assert [r["epoch"] for r in splits] == [3, 4, 5]  # the poisons' fate at every split


def test_the_attacks_recipe_in_miniature(tmp_path: Path) -> None:
    """configs/study-attacks.yaml itself, shrunk only in sizes (600 pairs, 200 eval images, one grid point, the
    BadCLIP patches optimised 1 epoch on 128 pairs): the clean model, four attacks' studies, one attack table."""
    sizes = ("{'poison.source': {source: fashion-mnist, split: train, max_samples: 600}, 'poison.num_poisons': 18, "
             "'poison.cleaning': {size: 128, poisons: 0}, 'poison.target': {name: bag, aliases: [handbag, purse]}, "
             "'train.epochs': 2, 'train.warmup_steps': 2, 'train.batch_size': 64, "
             "'data.eval': {source: fashion-mnist, split: test, max_samples: 200}}")  # fmt: skip
    grid = [f"defenses.{d}.space.train\\.lr.grid=[1.0e-3]" for d in ("mmcl-only", "cleanclip")]
    args = [f"output_dir={tmp_path}", "workers=2", f"overrides={sizes}", *grid,
            "attacks.badclip.overrides.poison\\.optimize={epochs: 1, num_pairs: 128, batch_size: 32}",
            "attacks.badclip-text.overrides.poison\\.optimize={epochs: 1, num_pairs: 128, batch_size: 32, loss: text}",
            "filter.reference_size=256"]  # fmt: skip
    assert main(["study", "study-attacks", *args]) == 0
    root = tmp_path / "study-attacks"
    report = (root / "report" / "report.md").read_text()
    for attack in ("badnet", "blended", "badclip", "badclip-text"):
        assert report.count(f"| {attack} |") >= 3  # two pre-trainings, and its detection rows
    assert "(3 seeds)" in report and "cleanclip: CA / ASR %" in report and "mmcl-only: CA / ASR %" in report
    assert "Optimised triggers" in report


def test_the_finetuning_threat_model_starts_every_poisoned_model_from_the_clean_one(tmp_path: Path) -> None:
    """finetune: the poisoned models are the clean model fine-tuned on the poisoned data: each one's epoch-0
    evaluation is the clean model's last (the same weights), and it trains at the fine-tuning overrides."""
    sizes = ("{'poison.source': {source: fashion-mnist, split: train, max_samples: 600}, 'poison.num_poisons': 18, "
             "'poison.cleaning': {size: 128, poisons: 0}, 'poison.target': {name: bag, aliases: [handbag, purse]}, "
             "'train.epochs': 2, 'train.warmup_steps': 2, 'train.batch_size': 64, "
             "'data.eval': {source: fashion-mnist, split: test, max_samples: 200}}")  # fmt: skip
    args = [f"output_dir={tmp_path}", f"overrides={sizes}", "seeds=null", "filter=null",
            "attacks={blended: {overrides: {poison.trigger: {name: blended, alpha: 0.2}}}}",
            "finetune={overrides: {train.lr: 1.0e-4, train.epochs: 1, train.warmup_steps: 0}}",
            *(f"defenses.{d}.space.train\\.lr.grid=[1.0e-3]" for d in ("mmcl-only", "cleanclip"))]  # fmt: skip
    assert main(["study", "study-attacks", *args]) == 0
    root = tmp_path / "study-attacks"
    clean = [r for r in read_records(root / "pretrain" / "clean-model" / "metrics.jsonl") if r["kind"] == "epoch"]
    for tag in ("mmcl", "mmcl-ssl"):
        run = root / "attacks" / "blended" / "pretrain" / tag
        epochs = [r for r in read_records(run / "metrics.jsonl") if r["kind"] == "epoch"]
        assert epochs[0]["eval/clean_top1"] == clean[-1]["eval/clean_top1"]
        assert [r["epoch"] for r in epochs] == [0, 1]
        cfg = load_config(run / "config.yaml")
        assert cfg.train.lr == 1.0e-4 and Path(cfg.model.checkpoint) == root / "pretrain" / "clean-model"
