"""A run killed with SIGKILL — mid-step at random moments, and mid-checkpoint-write — resumes and ends with
the metrics and weights of an uninterrupted run (CPU, deterministic)."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import tiny_overrides


def _pretrain(overrides: list[str], env: dict[str, str] | None = None, kill_after: float | None = None) -> int:
    cmd = [sys.executable, "-m", "clipbackdoor", "pretrain", "demo", *overrides]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
    return proc.returncode


def _epochs(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


@pytest.mark.slow  # CI keeps a SIGKILL mid-checkpoint-write + resume: tests/test_ddp_bad_data.py
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(fmnist_root: Path, tmp_path: Path) -> None:
    extra = {"train.epochs": 3, "data.train": f"{{source: fashion-mnist, root: {fmnist_root}, max_samples: 128}}"}
    reference = tiny_overrides(fmnist_root, tmp_path, **{**extra, "name": "reference"})
    crashed = tiny_overrides(fmnist_root, tmp_path, **{**extra, "name": "crashed"})
    started = time.perf_counter()
    assert _pretrain(reference) == 0
    whole = time.perf_counter() - started  # start-up included: the kills below land anywhere in a run

    # killed inside the 5th atomic write: epoch 2's state file is on disk under a temporary name, the
    # pointer still names epoch 1
    assert _pretrain(crashed, env={"CLIPBACKDOOR_KILL_IN_WRITE": "5"}) == -9
    pointer = json.loads((tmp_path / "crashed" / "checkpoints" / "latest.json").read_text())
    assert pointer["epoch"] == 1
    rng = random.Random(0)
    kills = 0
    for _ in range(6):  # then killed at random moments (start-up, mid-step, evaluation, writing)
        code = _pretrain(crashed, kill_after=rng.uniform(0.25, 0.7) * whole)
        if code == 0:
            break
        assert code == -9
        kills += 1
    else:
        assert _pretrain(crashed) == 0
    assert kills >= 1
    ours, theirs = _epochs(tmp_path / "crashed"), _epochs(tmp_path / "reference")
    assert [r for r in ours if r["kind"] == "epoch"] == [r for r in theirs if r["kind"] == "epoch"]
    assert ours == theirs  # step records too: nothing repeated, nothing lost
    a = load_file(tmp_path / "crashed" / "checkpoints" / "epoch_003.safetensors")
    b = load_file(tmp_path / "reference" / "checkpoints" / "epoch_003.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
