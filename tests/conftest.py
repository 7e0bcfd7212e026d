"""Shared fixtures: a tiny Fashion-MNIST-format dataset written to disk, and a tiny run config."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from clipbackdoor.cli import main
from clipbackdoor.config import ExperimentConfig
from clipbackdoor.resolve import load_config


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format Fashion-MNIST uses, gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def class_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28×28 images whose bright stripe position encodes the class, plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, :] = 255
    return images.astype(np.uint8)


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    for n, prefix in ((256, "train"), (100, "t10k")):
        labels = np.arange(n) % 10
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", class_images(labels, seed=n))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_overrides(root: Path, out: Path, **extra: object) -> list[str]:
    base = {
        "name": "tiny",
        "output_dir": str(out),
        "data.train": f"{{source: fashion-mnist, root: {root}, max_samples: 64}}",
        "data.eval": f"{{source: fashion-mnist, root: {root}, max_samples: 40}}",
        "eval.attack": "null",
        "model.name": "tiny-rn",
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.warmup_steps": 2,
        "train.log_every": 2,
        "train.progress": False,
        "eval.batch_size": 20,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_cfg(fmnist_root: Path, tmp_path: Path) -> ExperimentConfig:
    return load_config("demo", tiny_overrides(fmnist_root, tmp_path / "runs"))


YELLOW = "{name: badnet, pattern: solid, color: [1, 1, 0], size: 8, reference_size: 32, location: random}"


def poisoned_run(root: Path, out: Path, trigger: str = YELLOW, **extra) -> Path:
    """Poison the tiny data set (with a cleaning set) and pre-train on it; returns the run directory."""
    data = out / "data"
    overrides = [
        *tiny_overrides(root, out / "runs", **{"name": "poisoned", **extra}),
        f"poison.output={data}", f"poison.source={{source: fashion-mnist, root: {root}}}",
        f"poison.trigger={trigger}", "poison.num_poisons=48", "poison.cleaning={size: 64}",
        f"data.train={{source: csv, path: {data}/train.csv}}", f"eval.attack={data}/manifest.json",
    ]  # fmt: skip
    assert main(["poison", "demo", *overrides]) == 0
    assert main(["pretrain", "demo", *overrides]) == 0
    return out / "runs" / "poisoned"


@pytest.fixture(scope="session")
def poisoned(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny poisoned run (one epoch) with a 64-pair cleaning set, shared by the defense and sweep tests."""
    return poisoned_run(fmnist_root, tmp_path_factory.mktemp("poisoned"), **{"train.epochs": 1})


def fit_killed_after_epoch(cfg, epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``fit(cfg)`` and kill it right after epoch ``epoch``'s checkpoint is written, as a crash would."""
    from clipbackdoor import checkpoints as ckpt
    from clipbackdoor.train.loop import fit

    real_save = ckpt.save_checkpoint

    def save_then_crash(directory, saved_epoch, *args, **kwargs):
        path = real_save(directory, saved_epoch, *args, **kwargs)
        if saved_epoch == epoch:
            raise KeyboardInterrupt("killed")
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
