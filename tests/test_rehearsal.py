"""A dress rehearsal of the paper's study: `clipbackdoor study configs/study-cc3m.yaml` itself, in miniature, and of
`configs/study-cc3m-extended.yaml` (the same study, read from that file, with robust pre-training and the
detection stage).

Only what must change to fit a 2-core machine is overridden: data paths (synthetic web-like JPEG shards and an
ImageNet-layout eval folder), dataset sizes, epochs and grid size, the model (micro-rn in CI's miniatures, tiny-rn
where SafeCLIP splits and at the larger size) and image size, the process count (2) and DataLoader workers (2),
warm-up steps scaled to keep the recipe's share, and a subset of the eval classes and templates. The robust regimes'
phases are epochs, so they shrink with the epochs: RoCLIP keeps its period (2) and runs two matching epochs, so the
second matches every image against the pool the first filled with both ranks' captions, under DDP; SafeCLIP's
warm-ups become 1 + 1 epochs of 3, so it splits once.

Everything else is the shipped recipe: the global batch (2048, 1024 for MMCL+SSL) with its per-forward
micro-batch (accumulated exactly over 2 ranks), the objectives, the BadNet trigger, target and mode, the torchrun
launcher, the defenses and their single-device cleaning batches, the ImageNet eval with ASR every epoch, the
selection rule, the detectors and the share of pairs filtered. Poisoning goes from shards to shards.

CI runs the study-cc3m and study-cc6m miniatures on the same generated data; `make test-slow` adds
study-cc3m-extended (every stanza of study-cc3m.yaml, and the axes beyond it) on that data, and study-cc3m and
study-cc6m at a larger scale, with more epochs and an interruption between stages.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from clipbackdoor.checkpoints import latest_checkpoint, load_state
from clipbackdoor.cli import main
from clipbackdoor.config import read_yaml, resolve_yaml
from clipbackdoor.objectives.roclip import RoCLIP
from clipbackdoor.resolve import load_config
from clipbackdoor.study.config import read_study_tree
from clipbackdoor.synth import SynthManifest, synthesize

TEMPLATES = ["a photo of a {}.", "a bad photo of a {}."]
# miniature -> (pairs, epochs, max image side, eval images); the global batch stays the recipe's
SCALES = {"ci": (2048 + 48, 1, 256, 30), "slow": (2 * 2048 + 64, 3, 640, 200)}


def _recipe(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    study = read_study_tree(name)
    return study, read_yaml(resolve_yaml(study["base"]))


def _warmup(pairs: int, batch: int, epochs: int, share: float) -> int:
    """Warm-up steps that keep the recipe's share of the steps at this scale."""
    return round(share * (pairs // batch) * epochs)


def rehearsal_overrides(name: str, data: SynthManifest, out: Path, scale: str, model: str) -> list[str]:
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
        "model.name": model,
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
        tag_epochs = _phase_epochs(tag, o, epochs, args)
        recipe = _recipe_train(o, base)
        recipe_share = recipe["warmup_steps"] / ((full_pairs // recipe["batch_size"]) * recipe["epochs"])
        warmup = _warmup(pairs, recipe["batch_size"], tag_epochs, recipe_share)
        args.append(f"pretrain.{tag}.overrides.train\\.warmup_steps={warmup}")
    for defense, spec in study["defenses"].items():
        args.append(f"defenses.{defense}.overrides={{train.epochs: {1 if scale == 'ci' else 2}, train.keep_last: 1, "
                    "train.warmup_steps: 0}")  # fmt: skip
        for key, param in spec["space"].items():
            args.append(f"defenses.{defense}.space.{key.replace('.', chr(92) + '.')}.grid=[{param['grid'][-3]}]")
    return args


def _recipe_train(spec: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A pre-training's batch, epochs and warm-up in the recipe: its own overrides, else the base's."""
    return {key: spec.get(f"train.{key}", base["train"][key]) for key in ("batch_size", "epochs", "warmup_steps")}


def _roclip_option(objective: dict[str, Any], key: str) -> Any:
    """RoCLIP's ``key`` as the recipe sets it, else the objective's own default (``{roclip: 1.0}`` sets none)."""
    term, default = objective["roclip"], inspect.signature(RoCLIP).parameters[key].default
    return term.get(key, default) if isinstance(term, dict) else default


def _phase_epochs(tag: str, spec: dict[str, Any], epochs: int, args: list[str]) -> int:
    """The miniature's epochs of pre-training ``tag``, appending the overrides that set them: the scale's, or
    what a robust regime's phases need (see the module's docstring)."""
    objective, own = spec.get("objective", {}), "train.epochs" in spec
    if "roclip" in objective:
        epochs, own = 2 * _roclip_option(objective, "period"), True
    elif "safeclip" in objective:
        for phase in ("inmodal_warmup", "multimodal_warmup"):
            args.append(f"pretrain.{tag}.overrides.objective.safeclip.{phase}=1")
        epochs, own = 3, True
    if own:  # a pre-training's own epochs beat the study-wide override
        args.append(f"pretrain.{tag}.overrides.train\\.epochs={epochs}")
    return epochs


def _synth(root: Path, scale: str) -> SynthManifest:
    pairs, _, max_side, eval_images = SCALES[scale]
    return synthesize(root, pairs=pairs, eval_images=eval_images, classes=6, corrupt=8, shard_size=512,
                      max_side=max_side, seed=0, workers=2)  # fmt: skip


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def rehearse(
    name: str, scale: str, model: str, data: SynthManifest, root: Path, capsys: pytest.CaptureFixture
) -> tuple[Path, list[str]]:
    """Run the study in miniature and check what the paper's setting depends on; returns its folder and args."""
    out = root / "runs"
    args = rehearsal_overrides(name, data, out, scale, model)
    assert main(["study", name, *args]) == 0
    printed = capsys.readouterr().out
    study, base = _recipe(name)
    study_dir = out / study["name"]
    manifest = json.loads((study_dir / "data" / "manifest.json").read_text())

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
        assert cfg.data.train.source == "webdataset" and cfg.model.name == model  # on the poisoned shards
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
        full, recipe = base["poison"]["source"]["expected_pairs"], _recipe_train(spec, base)
        share = recipe["warmup_steps"] / ((full // batch) * recipe["epochs"])
        total = steps * cfg.train.epochs
        assert abs(cfg.train.warmup_steps / total - share) <= 1 / total
        # corrupt images reached training and were replaced and counted, not fatal
        assert last["data/bad_rows"] == len(data.corrupt) - skipped
        _check_regime(spec.get("objective", {}), epochs, run, batch * steps)
    # every cleaning trial: a single-device run at the recipe's batch, on its own device slot
    trials = sorted((study_dir / "sweeps").glob("*/trials/trial-*.log"))
    cleaned = [tag for tag, spec in study["pretrain"].items() if spec.get("clean", True)]
    assert len(trials) == len(cleaned) * len(study["defenses"])
    for log in trials:
        slot = re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", log.read_text())
        assert slot and slot.group(1) in {"0", "1"}, log
        record = [r for r in _records(log.with_suffix("")) if r["kind"] == "epoch"][-1]
        defense = log.parent.parent.name.split("--")[1]
        assert record["batch/world_size"] == 1
        assert record["batch/global_batch"] == (128 if defense == "mmcl-only" else 64)
    report = (study_dir / "report" / "report.md").read_text()
    assert "| MMCL |" in report and "| MMCL+SSL |" in report
    if "filter" in study:
        _check_filtering(study, study_dir, manifest, report, unreadable=len(data.corrupt) - skipped)
    return study_dir, args


def _check_regime(objective: dict[str, Any], epochs: list[dict[str, Any]], run: Path, per_epoch: int) -> None:
    """A robust regime's mechanism ran, not just its name. RoCLIP: in its first matching epoch the first step found
    the pool empty (and used the pair's own caption), in its second every step matched against the pool, which
    holds every rank's captions of both matching epochs (read back from the checkpoint). SafeCLIP: it split."""
    if "roclip" in objective:
        period = _roclip_option(objective, "period")
        pooled = {r["epoch"]: r["train/roclip/pooled"] for r in epochs if r["epoch"] > 0}
        assert pooled[period] < 1.0 and pooled[2 * period] == 1.0, pooled
        state = load_state(latest_checkpoint(run)["state"])["objective"]
        pool = next(v for k, v in state.items() if k.endswith("_extra_state") and "filled" in v)
        # the pairs of two matching epochs, from both ranks
        assert pool["filled"] == min(2 * per_epoch, _roclip_option(objective, "pool_size"))
        assert torch.allclose(pool["pool"][: pool["filled"]].norm(dim=1), torch.ones(pool["filled"]))
    if "safeclip" in objective:
        assert 0.0 < epochs[-1]["safeclip/safe_share"] <= 1.0 and "safeclip/safe_share" not in epochs[-2]
        # the split's diagnostic (the manifest's poisons and clean pairs kept safe), and its two passes
        assert {"safeclip/poison_safe_share", "safeclip/clean_safe_share", "pass/risky/steps"} <= set(epochs[-1])


def _check_filtering(
    study: dict[str, Any], study_dir: Path, manifest: dict[str, Any], report: str, unreadable: int
) -> None:
    """Every scored model: one score per readable pair with an AUROC per detector, the recipe's share of the
    pairs dropped, and a model pre-trained again on what was left."""
    spec = study["filter"]
    entries = {e["tag"]: e for e in json.loads((study_dir / "filter" / "filter.json").read_text())}
    assert sorted(entries) == sorted(spec["pretrain"])
    for tag, entry in entries.items():
        assert entry["scored"] == manifest["num_rows"] - unreadable
        assert entry["poisons"] == len(manifest["poison_rows"])
        assert entry["dropped"] == round(entry["scored"] * spec["drop_percent"] / 100)
        assert entry["filtered"]["pairs"] == entry["scored"] - entry["dropped"]  # unscored rows are dropped too
        assert {f"image_{d}" for d in ("kdist", "lid", "slof", "dao")} <= set(entry["detection"])
        assert all(0.0 <= m["auroc"] <= 1.0 for m in entry["detection"].values())
        retrained = study_dir / "pretrain" / f"{tag}-filtered"
        assert (retrained / "checkpoints" / "latest.json").is_file()
        assert any(r["kind"] == "epoch" and r["epoch"] >= 1 for r in _records(retrained))
    assert "## Detection by the poisoned model" in report and "## Detect, filter, pre-train again" in report


@pytest.fixture(scope="module")
def ci_web_data(tmp_path_factory: pytest.TempPathFactory) -> SynthManifest:
    """The CI miniature's web-like data, generated once for both recipes."""
    return _synth(tmp_path_factory.mktemp("web"), "ci")


# CI runs both shipped recipes on the same generated data (~50 s each), on micro-rn: at one or two steps per
# pre-training a study's time is its process start-ups, not compute. The extended study (every stanza of
# study-cc3m, and the robust regimes and the detection stage beyond it: six 2-rank pre-trainings, two detections)
# takes ~4 minutes more, which CI's ~8 minutes of `make test` on 2 cores cannot hold: it runs in `make test-slow`,
# and CI checks its plan on 2 and 8 GPUs (tests/test_plan.py). It needs tiny-rn: SafeCLIP's first split keeps the
# pairs whose clean posterior is 0.9 or more, and micro-rn after two one-step epochs tells no pair from another.
@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("study-cc3m", "micro-rn"),
        ("study-cc6m", "micro-rn"),
        pytest.param("study-cc3m-extended", "tiny-rn", marks=pytest.mark.slow),
    ],
)
def test_rehearsal_of_the_shipped_study(
    name: str, model: str, ci_web_data: SynthManifest, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rehearse(name, "ci", model, ci_web_data, tmp_path, capsys)


def _best_table(report: str) -> str:
    start = report.index("## Best cleaned")
    return report[start : report.index("\n## ", start + 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["study-cc3m", "study-cc6m"])
def test_slow_rehearsal_interrupted_between_stages_resumes_to_the_same_report(
    name: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study_dir, args = rehearse(name, "slow", "tiny-rn", _synth(tmp_path / "web", "slow"), tmp_path, capsys)
    report = (study_dir / "report" / "report.md").read_text()
    shutil.rmtree(study_dir / "sweeps")  # the state of a study stopped between pre-training and the sweeps
    shutil.rmtree(study_dir / "report")
    assert main(["study", name, *args]) == 0
    assert _best_table((study_dir / "report" / "report.md").read_text()) == _best_table(report)


# The CC3M attack study in the CI miniature's sizes: the clean model, then the paper's study once per attack on
# 2 ranks, BadCLIP's patch optimised against the clean model (1 epoch of 256 pairs: a size), its seeds axis, and
# detection. Some 30 pre-trainings and trials: `make test-slow`, not CI's ~8 minutes (CI runs a two-attack study
# on Fashion-MNIST, tests/test_attack_axis.py, and this recipe's plan on 2 and 8 GPUs, tests/test_plan.py).
@pytest.mark.slow
def test_rehearsal_of_the_cc3m_attack_study(ci_web_data: SynthManifest, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "runs"
    _, base = _recipe("study-attacks-cc3m")
    clean_warmup = _warmup(SCALES["ci"][0], 2048, 1, base["train"]["warmup_steps"] / ((2_725_316 // 2048) * 64))
    args = [
        *rehearsal_overrides("study-attacks-cc3m", ci_web_data, out, "ci", "micro-rn"),
        f"clean_model.overrides.train\\.warmup_steps={clean_warmup}",
        "attacks.badclip.overrides.poison\\.optimize={num_pairs: 256, batch_size: 64, epochs: 1}",
        "filter.reference_size=512",
    ]
    assert main(["study", "study-attacks-cc3m", *args]) == 0
    root = out / "study-attacks-cc3m"
    clean = [json.loads(x) for x in (root / "pretrain" / "clean-model" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in clean if r["kind"] == "epoch"][-1]
    assert (last["batch/global_batch"], last["batch/world_size"]) == (2048, 2) and "eval/asr_top1" not in last
    rows = None
    for attack in ("badnet", "blended", "badclip"):
        manifest = json.loads((root / "attacks" / attack / "data" / "manifest.json").read_text())
        assert manifest["files"]["shards"].startswith("shards/")
        rows = rows or manifest["poison_rows"]
        assert manifest["poison_rows"] == rows  # the same pairs poisoned, so the same cleaning set
        for tag in ("mmcl", "mmcl-ssl"):
            run = root / "attacks" / attack / "pretrain" / tag
            epoch = [r for r in _records(run) if r["kind"] == "epoch"][-1]
            assert epoch["batch/world_size"] == 2 and "eval/asr_top1" in epoch
        assert len(json.loads((root / "attacks" / attack / "filter" / "filter.json").read_text())) == 2
    badclip = json.loads((root / "attacks" / "badclip" / "data" / "manifest.json").read_text())
    assert badclip["trigger"]["name"] == "badclip" and all("banana" in c.lower() for c in badclip["poison_captions"])
    assert (root / "attacks" / "badclip" / "pretrain" / "mmcl-seed2").is_dir()
    assert not (root / "attacks" / "badnet" / "pretrain" / "mmcl-seed1").exists()
    report = (root / "report" / "report.md").read_text()
    for attack in ("badnet", "blended", "badclip"):  # its two pre-trainings' rows, then their detection rows
        assert report.count(f"| {attack} | MMCL (mmcl) |") == report.count(f"| {attack} | MMCL+SSL (mmcl-ssl) |") == 2
    assert "| cleanclip: CA / ASR % |" in report and "(3 seeds)" in report and "Optimised triggers" in report
