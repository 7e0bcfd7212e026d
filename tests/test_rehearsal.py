"""A dress rehearsal of the paper's study: `clipbackdoor study configs/study-cc3m.yaml` itself, in miniature.

Only what must change to fit a 2-core machine is overridden: data paths (synthetic web-like JPEG shards and an
ImageNet-layout eval folder), dataset sizes, epochs and grid size, the model (tiny-rn) and image size, the
process count (2) and DataLoader workers (2), warm-up steps scaled to keep the recipe's share, and a subset of
the eval classes and templates. Everything else is the shipped recipe: the global batch (2048, 1024 for
MMCL+SSL) with its per-forward micro-batch (accumulated exactly over 2 ranks), the objectives, the BadNet
trigger, target and mode, the torchrun launcher, the defenses and their single-device cleaning batches, the
ImageNet eval with ASR every epoch, the selection rule. Poisoning goes from shards to shards.

CI runs the CC3M miniature; `make test-slow` adds CC6M's on the same generated data, and both at a larger scale,
with more epochs and an interruption between stages.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from clipbackdoor.cli import main
from clipbackdoor.config import load_config, read_yaml, resolve_yaml
from clipbackdoor.synth import SynthManifest, synthesize

TEMPLATES = ["a photo of a {}.", "a bad photo of a {}."]
# miniature -> (pairs, epochs, max image side, eval images); the global batch stays the recipe's
SCALES = {"ci": (2048 + 48, 1, 256, 30), "slow": (2 * 2048 + 64, 3, 640, 200)}


def _recipe(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    study = read_yaml(resolve_yaml(name))
    return study, read_yaml(resolve_yaml(study["base"]))


def _warmup(pairs: int, batch: int, epochs: int, share: float) -> int:
    """Warm-up steps that keep the recipe's share of the steps at this scale."""
    return round(share * (pairs // batch) * epochs)


def rehearsal_overrides(name: str, data: SynthManifest, out: Path, scale: str) -> list[str]:
    """The study's command-line overrides for the miniature: nothing but what the docstring lists."""
    study, base = _recipe(name)
    pairs, epochs, _, _ = SCALES[scale]
    full_pairs = base["poison"]["source"]["expected_pairs"]
    # dataset sizes: 16 poisons per recipe's 1500 (0.8 % here: a 0.05 % rate would be one image), 128 cleaning
    # pairs per recipe's 100k (2 steps of the cleaning batch); CC6M doubles both, as its recipe does
    poisons = round(16 * base["poison"]["num_poisons"] / 1500)
    cleaning = round(128 * base["poison"]["cleaning"]["size"] / 100_000)
    overrides = {
        "poison.source": data.config()["webdataset"],
        "poison.shard_size": 512,
        "poison.num_poisons": poisons,
        "poison.cleaning.size": cleaning,
        "poison.image_size": 32,
        "model.name": "tiny-rn",
        "data.num_workers": 2,
        "data.eval": f"{{source: imagenet, labels: {data.eval_labels}, folder: {data.eval_folder}, "
        f"classes: {json.dumps(data.classes)}, templates: {json.dumps(TEMPLATES)}}}",
        "train.epochs": epochs,
    }
    args = [
        f"output_dir={out}",
        "overrides={" + ", ".join(f"'{k}': {v}" for k, v in overrides.items()) + "}",
        f"pretrain_launcher=[{sys.executable}, -m, torch.distributed.run, --standalone, --nproc_per_node, '2']",
        "devices=[0, 1]",
        "workers=2",
    ]
    for tag, spec in study["pretrain"].items():
        o = spec["overrides"]
        recipe_share = base["train"]["warmup_steps"] / ((full_pairs // o["train.batch_size"]) * base["train"]["epochs"])
        warmup = _warmup(pairs, o["train.batch_size"], epochs, recipe_share)
        args.append(f"pretrain.{tag}.overrides.train\\.warmup_steps={warmup}")
    for defense, spec in study["defenses"].items():
        args.append(f"defenses.{defense}.overrides={{train.epochs: {1 if scale == 'ci' else 2}, train.keep_last: 1, "
                    "train.warmup_steps: 0}")  # fmt: skip
        for key, param in spec["space"].items():
            args.append(f"defenses.{defense}.space.{key.replace('.', chr(92) + '.')}.grid=[{param['grid'][-3]}]")
    return args


def _synth(root: Path, scale: str) -> SynthManifest:
    pairs, _, max_side, eval_images = SCALES[scale]
    return synthesize(root, pairs=pairs, eval_images=eval_images, classes=6, corrupt=8, shard_size=512,
                      max_side=max_side, seed=0, workers=2)  # fmt: skip


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def rehearse(
    name: str, scale: str, data: SynthManifest, root: Path, capsys: pytest.CaptureFixture
) -> tuple[Path, list[str]]:
    """Run the study in miniature and check what the paper's setting depends on; returns its folder and args."""
    out = root / "runs"
    args = rehearsal_overrides(name, data, out, scale)
    assert main(["study", name, *args]) == 0
    printed = capsys.readouterr().out
    study_dir = out / read_yaml(resolve_yaml(name))["name"]
    manifest = json.loads((study_dir / "data" / "manifest.json").read_text())
    study, base = _recipe(name)

    # poisoning from shards to shards; clean samples keep their JPEG bytes; empty captions dropped and counted
    assert manifest["files"]["shards"].startswith("shards/")
    # (a corrupt image drawn as a poison is skipped there too: poisoning has to decode it)
    empty = sum(c["kind"] == "empty-caption" for c in data.corrupt)
    skipped = len(manifest["skipped_rows"])
    assert empty <= skipped <= len(data.corrupt) and manifest["num_rows"] == data.pairs - skipped
    # every stage's files
    for tag in study["pretrain"]:
        run = study_dir / "pretrain" / tag
        assert (run / "checkpoints" / "latest.json").is_file() and (study_dir / "pretrain" / f"{tag}.log").is_file()
        cfg = load_config(run / "config.yaml")
        assert cfg.data.train.source == "webdataset"  # pre-trained on the poisoned shards
        records = _records(run)
        epochs = [r for r in records if r["kind"] == "epoch"]
        spec = study["pretrain"][tag]["overrides"]
        batch, micro = spec["train.batch_size"], spec["train.micro_batch"]
        # steps per epoch = ⌊pairs / global batch⌋, by hand, on 2 processes; the layout the recipe implies
        steps = manifest["num_rows"] // batch
        assert [r["step"] for r in epochs] == [e * steps for e in range(len(epochs))]
        last = epochs[-1]
        assert (last["batch/global_batch"], last["batch/world_size"], last["batch/micro_batch"]) == (batch, 2, micro)
        assert last["batch/accum_steps"] == batch // 2 // micro
        assert all("eval/asr_top1" in r for r in epochs)  # ASR every epoch, epoch 0 included
        # the plan printed at the start says the same
        block = printed[printed.index(f"== pre-train {tag}") :]
        assert re.search(rf"steps\s+{steps:,} per epoch", block.split("\n==")[0]), block[:400]
        # the warm-up keeps the recipe's share (to one step)
        full = base["poison"]["source"]["expected_pairs"]
        share = base["train"]["warmup_steps"] / ((full // batch) * base["train"]["epochs"])
        total = steps * cfg.train.epochs
        assert abs(cfg.train.warmup_steps / total - share) <= 1 / total
        # corrupt images reached training and were replaced and counted, not fatal
        assert last["data/bad_rows"] == len(data.corrupt) - skipped
    # every cleaning trial: a single-device run at the recipe's batch, on its own device slot
    trials = sorted((study_dir / "sweeps").glob("*/trials/trial-*.log"))
    assert len(trials) == len(study["pretrain"]) * len(study["defenses"])
    for log in trials:
        slot = re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", log.read_text())
        assert slot and slot.group(1) in {"0", "1"}, log
        record = [r for r in _records(log.with_suffix("")) if r["kind"] == "epoch"][-1]
        defense = log.parent.parent.name.split("--")[1]
        assert record["batch/world_size"] == 1
        assert record["batch/global_batch"] == (128 if defense == "mmcl-only" else 64)
    report = (study_dir / "report" / "report.md").read_text()
    assert "| MMCL |" in report and "| MMCL+SSL |" in report
    return study_dir, args


@pytest.fixture(scope="module")
def ci_web_data(tmp_path_factory: pytest.TempPathFactory) -> SynthManifest:
    """The CI miniature's web-like data, generated once for both recipes."""
    return _synth(tmp_path_factory.mktemp("web"), "ci")


# CC6M differs from CC3M in its poisoning and cleaning sizes only; with both, CI's rehearsal takes ~210 s of the
# ~8 minutes `make test` may take on 2 cores, so CI runs CC3M and `make test-slow` both (on the shared data)
@pytest.mark.parametrize("name", ["study-cc3m", pytest.param("study-cc6m", marks=pytest.mark.slow)])
def test_rehearsal_of_the_shipped_study(
    name: str, ci_web_data: SynthManifest, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rehearse(name, "ci", ci_web_data, tmp_path, capsys)


def _best_table(report: str) -> str:
    start = report.index("## Best cleaned")
    return report[start : report.index("\n## ", start + 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["study-cc3m", "study-cc6m"])
def test_slow_rehearsal_interrupted_between_stages_resumes_to_the_same_report(
    name: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study_dir, args = rehearse(name, "slow", _synth(tmp_path / "web", "slow"), tmp_path, capsys)
    report = (study_dir / "report" / "report.md").read_text()
    shutil.rmtree(study_dir / "sweeps")  # the state of a study stopped between pre-training and the sweeps
    shutil.rmtree(study_dir / "report")
    assert main(["study", name, *args]) == 0
    assert _best_table((study_dir / "report" / "report.md").read_text()) == _best_table(report)
