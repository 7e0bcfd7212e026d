"""``data.decode: gpu`` on CPU tensors: the same code that runs on the device, checked against the CPU path."""

from __future__ import annotations

import io
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipbackdoor.augment import ViewMaker
from clipbackdoor.config import CsvPairs
from clipbackdoor.data import build_pair_dataset, collate_skipping_bad
from clipbackdoor.data.device_decode import DeviceDecode
from clipbackdoor.data.transforms import complete_jpeg
from clipbackdoor.resolve import load_config
from clipbackdoor.synth import SynthManifest, synthesize
from clipbackdoor.train.loop import fit

from .conftest import tiny_overrides

TOKENIZER = open_clip.get_tokenizer("RN50")
SIZE = 64


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> SynthManifest:
    return synthesize(tmp_path_factory.mktemp("web") / "set", pairs=24, eval_images=0, corrupt=0, max_side=500)


def _batch(dataset, indices: list[int]) -> dict:
    return collate_skipping_bad([dataset[(1, i)] for i in indices])


def test_device_batches_match_the_cpu_path(web: SynthManifest) -> None:
    views = ViewMaker(frozenset({"image_aug", "text_aug"}), seed=0)
    cfg = CsvPairs(path=str(web.csv))
    cpu = build_pair_dataset(cfg, SIZE, 0, TOKENIZER, views)
    gpu = build_pair_dataset(cfg, SIZE, 0, TOKENIZER, views, device_decode=True)
    indices = list(range(16))
    loaded = _batch(gpu, indices)
    assert isinstance(loaded["image"], list) and all(x.dim() == 1 for x in loaded["image"])  # bytes, not pixels
    assert "image_aug" not in loaded and "text_aug" in loaded  # EDA stays in the workers
    batch = DeviceDecode(SIZE, torch.device("cpu"), views)(loaded, epoch=1)
    expected = _batch(cpu, indices)
    assert batch["image"].shape == (16, 3, SIZE, SIZE) and batch["image"].dtype == torch.uint8
    assert torch.equal(batch["text"], expected["text"]) and torch.equal(batch["text_aug"], expected["text_aug"])
    for got, want in zip(batch["image"], expected["image"], strict=True):  # libjpeg + tensor resize vs PIL
        assert (got.float() - want.float()).abs().mean() <= 2.0
    aug_diff = (batch["image_aug"].float() - expected["image_aug"].float()).abs().mean(dim=(1, 2, 3))
    assert aug_diff.median() <= 2.0  # the same AutoAugment operations per sample; kernels and inputs differ
    assert not torch.equal(batch["image_aug"], batch["image"])


def test_a_batch_mixing_decoded_images_and_jpegs_keeps_its_order(web: SynthManifest) -> None:
    gpu = build_pair_dataset(CsvPairs(path=str(web.csv)), SIZE, 0, TOKENIZER, device_decode=True)
    items = [gpu[(1, i)] for i in range(4)]
    with Image.open(web.out / "images" / sorted(p.name for p in (web.out / "images").iterdir())[1]) as im:
        buffer = io.BytesIO()
        im.save(buffer, format="PNG")  # a poisoned sample is a PNG: the worker decodes it
    png = np.asarray(Image.open(buffer).convert("RGB").resize((SIZE, SIZE)))
    items[1]["image"] = decoded = torch.from_numpy(png.copy()).permute(2, 0, 1)
    batch = DeviceDecode(SIZE, torch.device("cpu"))(collate_skipping_bad(items), epoch=1)
    assert torch.equal(batch["image"][1], decoded)
    assert not torch.equal(batch["image"][0], batch["image"][1])


def test_broken_jpegs_are_decoded_on_the_cpu_or_counted(web: SynthManifest) -> None:
    data = (web.out / "images").glob("*.jpg").__next__().read_bytes()
    assert complete_jpeg(data) and not complete_jpeg(data[: len(data) // 2]) and not complete_jpeg(b"<html>")
    garbage = torch.frombuffer(bytearray(b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9"), dtype=torch.uint8)
    good = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    batch = {"image": [good, garbage], "index": torch.tensor([7, 8]), "bad_rows": []}
    out = DeviceDecode(SIZE, torch.device("cpu"))(batch, epoch=1)
    assert out["image"].shape == (2, 3, SIZE, SIZE)
    assert bool((out["image"][1] == 128).all()) and not bool((out["image"][0] == 128).all())
    assert [b.index for b in out["bad_rows"]] == [8] and "trained on as grey" in out["bad_rows"][0].reason


def test_a_run_decoding_on_the_device_trains_on_what_the_cpu_path_gives(
    web: SynthManifest, fmnist_root, tmp_path
) -> None:
    """The same config on either path: the same samples and views, so the first step's loss agrees (later
    steps drift apart a little: each update follows pixels that differ by up to 2/255)."""
    losses = {}
    for decode in ("cpu", "gpu"):
        overrides = tiny_overrides(fmnist_root, tmp_path / decode, **{
            "data.train": f"{{source: csv, path: {web.csv}}}", "data.decode": decode, "train.epochs": 1,
            "train.batch_size": 8, "train.log_every": 1, "objective": "{mmcl: 1.0, ssl: 1.0}",
            "eval.every_epoch": False,
        })  # fmt: skip
        fit(load_config("demo", overrides))
        records = [json.loads(line) for line in (tmp_path / decode / "tiny" / "metrics.jsonl").open()]
        losses[decode] = [r["train/loss"] for r in records if r["kind"] == "step"]
    assert len(losses["gpu"]) == 3  # 24 pairs / 8
    assert losses["gpu"][0] == pytest.approx(losses["cpu"][0], abs=0.02), losses
    assert losses["gpu"] == pytest.approx(losses["cpu"], rel=0.05)
