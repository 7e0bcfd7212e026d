"""DDP that survives bad data: under 2-rank torchrun, corrupt images in a CSV or in WebDataset shards are
replaced by the next good sample of the global order, counted, and the run equals a 1-process run of the same
global batch; a 2-rank run killed mid-way resumes on 1 process to the same result."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipbackdoor.data.fashion_mnist import CLASSNAMES

from .conftest import class_images, tiny_overrides
from .test_distributed import _free_port

N = 64  # pairs: 4 global batches of 16, so every sample (and every bad one) is met each epoch
CORRUPT = {3: b"", 17: b"\x89PNG\r\n\x1a\n truncated", 30: b"<html>not an image</html>", 51: b"\xff\xd8\xff"}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _pairs() -> list[tuple[bytes, str]]:
    labels = np.arange(N) % 10
    images = class_images(labels, seed=5)
    return [(CORRUPT.get(i, _png(images[i])), f"a photo of a {CLASSNAMES[labels[i]]}.") for i in range(N)]


def _csv(folder: Path) -> str:
    (folder / "images").mkdir(parents=True)
    lines = ["image,caption"]
    for i, (data, caption) in enumerate(_pairs()):
        (folder / "images" / f"{i}.png").write_bytes(data)
        lines.append(f"images/{i}.png,{caption}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return f"{{source: csv, path: {folder / 'train.csv'}}}"


def _shards(folder: Path) -> str:
    folder.mkdir(parents=True)
    for shard in range(2):
        with tarfile.open(folder / f"s-{shard}.tar", "w") as tar:
            for i, (data, caption) in enumerate(_pairs()[shard * N // 2 : (shard + 1) * N // 2]):
                for name, payload in ((f"{i:04d}.png", data), (f"{i:04d}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return f"{{source: webdataset, access: index, urls: '{folder}/s-{{0..1}}.tar'}}"


def _run(fmnist_root: Path, out: Path, name: str, train: str, ranks: int, env: dict | None = None) -> int:
    overrides = tiny_overrides(fmnist_root, out, **{
        "name": name, "model.name": "tiny-vit", "data.train": train, "train.epochs": 2,
        "train.batch_size": 16, "train.micro_batch": 8,
    })  # fmt: skip
    launcher = [sys.executable]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                    "--master_port", str(_free_port())]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run([*launcher, "-m", "clipbackdoor.cli", "pretrain", "demo", *overrides], env=env,
                          capture_output=True, text=True)  # fmt: skip
    return done.returncode


def _epochs(run: Path) -> list[dict]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "batch/"))} for r in records
            if r["kind"] == "epoch"]  # fmt: skip


def _assert_same_run(a: list[dict], b: list[dict]) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key, value in rb.items():
            if isinstance(value, str):
                assert ra[key] == value
                continue
            assert abs(ra[key] - value) <= 1e-4 * max(1.0, abs(value)), (ra["epoch"], key, ra[key], value)


def test_corrupt_csv_images_under_two_ranks_then_resume_on_one(fmnist_root: Path, tmp_path: Path) -> None:
    """Killed by SIGKILL while writing epoch 2's checkpoint on 2 ranks, resumed on 1 process: epoch 1 (2 ranks)
    and epoch 2 (1 process) equal a 1-process run of the same global batch."""
    train = _csv(tmp_path / "data")
    assert _run(fmnist_root, tmp_path, "one", train, ranks=1) == 0
    assert _run(fmnist_root, tmp_path, "moved", train, ranks=2, env={"CLIPBACKDOOR_KILL_IN_WRITE": "4"}) != 0
    two_ranks = [json.loads(x) for x in (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in two_ranks if r["kind"] == "epoch"] == [0, 1, 2]  # epoch 2's record, not its checkpoint
    assert (two_ranks[-1]["batch/world_size"], two_ranks[-1]["batch/per_process"]) == (2, 8)
    assert two_ranks[-1]["data/bad_rows"] == len(CORRUPT)
    assert json.loads((tmp_path / "moved" / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    assert _run(fmnist_root, tmp_path, "moved", train, ranks=1) == 0
    moved, one = _epochs(tmp_path / "moved"), _epochs(tmp_path / "one")
    assert moved[-1]["data/bad_rows"] == one[-1]["data/bad_rows"] == len(CORRUPT)
    _assert_same_run(moved, one)
    resumed = [json.loads(x) for x in (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()][-1]
    assert (resumed["batch/world_size"], resumed["batch/per_process"], resumed["batch/accum_steps"]) == (1, 16, 2)


# CI: test_rehearsal's 2-rank pre-trainings read shards with corrupt samples of four kinds (replaced, counted)
@pytest.mark.slow
def test_corrupt_shard_images_under_two_ranks(fmnist_root: Path, tmp_path: Path) -> None:
    train = _shards(tmp_path / "shards")
    assert _run(fmnist_root, tmp_path, "two", train, ranks=2) == 0
    assert _run(fmnist_root, tmp_path, "one", train, ranks=1) == 0
    two, one = _epochs(tmp_path / "two"), _epochs(tmp_path / "one")
    assert two[-1]["data/bad_rows"] == one[-1]["data/bad_rows"] == len(CORRUPT)
    _assert_same_run(two, one)
