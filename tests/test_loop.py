import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.config import ConfigError
from clipbackdoor.resolve import load_config
from clipbackdoor.train import step
from clipbackdoor.train.loop import TrainingError, fit

from .conftest import fit_killed_after_epoch, tiny_overrides

TIMING = ("time/epoch_s", "time/samples_per_s")


def _comparable(run_dir: Path) -> list[dict]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_fit_writes_a_run_directory(tiny_cfg) -> None:
    history = fit(tiny_cfg)
    run = tiny_cfg.run_dir
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert (run / "config.yaml").is_file()
    assert load_config(run / "config.yaml") == tiny_cfg
    steps = [r for r in _comparable(run) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]  # 64 pairs / batch 16 = 4 steps per epoch, log every 2
    assert all(0 <= r["logit_scale"] <= 100 for r in steps)
    assert history[-1]["train/loss"] < history[1]["train/loss"]
    assert 0 <= history[-1]["eval/clean_top1"] <= 100
    assert ckpt.latest_checkpoint(run)["epoch"] == 2


def test_resume_after_a_crash_matches_an_uninterrupted_run(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = load_config("demo", tiny_overrides(fmnist_root, tmp_path / "a", **{"train.epochs": 3}))
    fit(whole)

    resumed = load_config("demo", tiny_overrides(fmnist_root, tmp_path / "b", **{"train.epochs": 3}))
    fit_killed_after_epoch(resumed, 1, monkeypatch)
    # Leave a stale record behind, as a crash between the metrics append and the checkpoint would.
    with (resumed.run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "epoch", "epoch": 2, "step": 99}) + "\n")
    fit(resumed)

    assert _comparable(resumed.run_dir) == _comparable(whole.run_dir)
    a = load_file(ckpt.latest_checkpoint(whole.run_dir)["weights"])
    b = load_file(ckpt.latest_checkpoint(resumed.run_dir)["weights"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_directory_refuses_a_different_config(tiny_cfg) -> None:
    fit(tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"epochs": 0})}))
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        fit(tiny_cfg)


def test_non_finite_loss_stops_the_run(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    real_encode = step.encode

    def poisoned_encode(*args):
        features = real_encode(*args)
        features["logit_scale"] = features["logit_scale"] * float("nan")
        return features

    monkeypatch.setattr(step, "encode", poisoned_encode)
    with pytest.raises(TrainingError, match="non-finite loss by step 2; no checkpoint"):
        fit(tiny_cfg)


def test_inf_loss_in_a_later_epoch_keeps_the_last_good_checkpoint(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    real_encode = step.encode
    calls = {"n": 0}
    steps_per_epoch = 64 // 16

    def blow_up_in_epoch_2(*args):
        features = real_encode(*args)
        calls["n"] += 1
        if calls["n"] > steps_per_epoch:
            features["logit_scale"] = features["logit_scale"] * float("inf")
        return features

    monkeypatch.setattr(step, "encode", blow_up_in_epoch_2)
    with pytest.raises(TrainingError, match=r"non-finite loss by step \d+; the last good checkpoint is .*latest.json"):
        fit(tiny_cfg)
    assert ckpt.latest_checkpoint(tiny_cfg.run_dir / "checkpoints")["epoch"] == 1
    weights = ckpt.latest_checkpoint(tiny_cfg.run_dir / "checkpoints")["weights"]
    assert all(torch.isfinite(t).all() for t in load_file(weights).values())


def test_channels_last_and_grad_checkpointing_train_the_same_model(fmnist_root: Path, tmp_path: Path) -> None:
    """Memory-layout and recomputation options change speed and memory, not the numbers (CPU, fp32)."""
    runs = {}
    for name, extra in (("plain", {}), ("tuned", {"train.channels_last": True, "train.grad_checkpointing": True})):
        cfg = load_config("demo", tiny_overrides(fmnist_root, tmp_path, **{"name": name, "train.epochs": 1, **extra}))
        runs[name] = fit(cfg)[-1]
    plain, tuned = runs["plain"], runs["tuned"]
    assert tuned["train/loss"] == pytest.approx(plain["train/loss"], rel=1e-4)
    assert tuned["eval/clean_top1"] == plain["eval/clean_top1"]


def test_a_failed_start_leaves_the_run_directory_as_it_was(fmnist_root, tmp_path) -> None:
    """A missing manifest stops the start before config.yaml is written: the corrected command is not refused."""
    from clipbackdoor.attacks.manifest import ManifestError
    from clipbackdoor.resolve import load_config

    from .conftest import tiny_overrides

    overrides = tiny_overrides(fmnist_root, tmp_path, **{"train.epochs": 1})
    with pytest.raises(ManifestError):
        fit(load_config("demo", [*overrides, f"eval.attack={tmp_path}/missing/manifest.json"]))
    assert not (tmp_path / "tiny" / "config.yaml").exists()
    assert [r["epoch"] for r in fit(load_config("demo", overrides))] == [0, 1]
