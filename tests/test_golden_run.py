"""A tiny run's numbers, recorded on main before the structure was refactored (issue 28), must come out bit for bit
the same: poison, pre-train under MMCL+SSL (AutoAugment + EDA views, the CLIP and in-modal losses), clean with
CleanCLIP. Every step's loss and every epoch's metrics are compared as exact floats (``float.hex``), and the
final weights by a hash of their bytes. Driven through the CLI so that moving modules cannot change the test.

Rewrite the record (only for a change meant to move training numbers, said in its commit):
``CLIPBACKDOOR_WRITE_GOLDEN=1 pytest tests/test_golden_run.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from clipbackdoor.cli import main

from .conftest import YELLOW, tiny_overrides

GOLDEN = Path(__file__).parent / "golden" / "tiny_run.json"
TIMING = ("time/", "bad_rows")


def _numbers(run: Path) -> dict:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [
        {k: float(v).hex() if isinstance(v, float) else v for k, v in r.items() if not k.startswith(TIMING)}
        for r in records
    ]
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    weights = load_file(run / "checkpoints" / Path(latest["weights"]).name)
    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode() + weights[key].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"records": kept, "weights_sha256": digest.hexdigest()}


def test_a_tiny_run_is_bit_identical_to_the_recorded_one(fmnist_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    overrides = [
        *tiny_overrides(fmnist_root, tmp_path / "runs", name="golden", **{"train.log_every": 1}),
        f"poison.output={data}", f"poison.source={{source: fashion-mnist, root: {fmnist_root}}}",
        f"poison.trigger={YELLOW}", "poison.num_poisons=48", "poison.cleaning={size: 64}",
        f"data.train={{source: csv, path: {data}/train.csv}}", f"eval.attack={data}/manifest.json",
        "objective={mmcl: 1.0, ssl: 1.0}",
    ]  # fmt: skip
    assert main(["poison", "demo", *overrides]) == 0
    assert main(["pretrain", "demo", *overrides]) == 0
    run = tmp_path / "runs" / "golden"
    clean = ["train.epochs=1", "train.batch_size=16", "train.warmup_steps=1", "train.lr=1e-4", "train.log_every=1"]
    assert main(["clean", str(run), "--defense", "cleanclip", "--name", "golden-clean", *clean]) == 0
    got = {"pretrain": _numbers(run), "clean": _numbers(tmp_path / "runs" / "golden-clean")}
    if os.environ.get("CLIPBACKDOOR_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    for stage in ("pretrain", "clean"):
        assert got[stage]["records"] == expected[stage]["records"], stage
        assert got[stage]["weights_sha256"] == expected[stage]["weights_sha256"], stage
