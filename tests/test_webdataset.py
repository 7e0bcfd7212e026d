"""WebDataset shards: streamed pairs with skip-and-count, seeded shuffling, splitting over ranks, poisoned
shards written by `poison`, and a 2-rank torchrun pre-training on them."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError, CsvPairs, ModelConfig, WebDatasetPairs
from clipbackdoor.data import BadRow, build_pair_dataset, build_pair_rows
from clipbackdoor.data.batching import BatchLayout
from clipbackdoor.data.webdataset_source import png_bytes, shard_urls, write_shards
from clipbackdoor.models import create_model

from .conftest import YELLOW, tiny_overrides
from .test_distributed import _free_port

TOKENIZER = create_model(ModelConfig(name="tiny-rn")).tokenizer


def _shards(folder: Path, n: int = 40, per_shard: int = 10) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pairs = ((f"{i:06d}", png_bytes(Image.new("RGB", (28, 28), (i, i, i))), "png", f"a photo of item {i}")
             for i in range(n))  # fmt: skip
    files = write_shards(pairs, str(folder / "s-%03d.tar"), per_shard)
    assert len(files) == n // per_shard
    return str(folder / f"s-{{000..{len(files) - 1:03d}}}.tar")


def _layout(world: int = 1, micro: int = 4) -> BatchLayout:
    return BatchLayout(
        global_batch=world * micro, world_size=world, per_process=micro, micro_batch=micro, accum_steps=1
    )


def _keys(ds) -> list[int]:
    return [x["index"] for x in ds]


def test_stream_is_seeded_split_over_ranks_and_counts_bad_samples(tmp_path: Path) -> None:
    urls = _shards(tmp_path / "shards")
    assert len(shard_urls(urls)) == 4
    cfg = WebDatasetPairs(urls=urls, epoch_samples=40, resampled=False, shuffle_buffer=1)
    ds = build_pair_dataset(cfg, 32, seed=0, tokenizer=TOKENIZER, layout=_layout())
    assert len(ds) == 40
    ds.set_epoch(1)
    first = _keys(ds)
    assert len(first) == 40 and len(set(first)) == 40  # one pass over every sample (4 shards, 1 worker)
    assert _keys(ds) == first  # seeded
    ds.set_epoch(2)
    assert _keys(ds) != first and sorted(_keys(ds)) == sorted(first)  # shards in another order
    mixed = build_pair_dataset(cfg.model_copy(update={"shuffle_buffer": 16}), 32, 0, TOKENIZER, layout=_layout())
    mixed.set_epoch(1)
    assert _keys(mixed) != first and set(_keys(mixed)) <= set(first)  # samples mixed across shards
    ranks = [build_pair_dataset(cfg, 32, 0, TOKENIZER, rank=r, layout=_layout(2)) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    halves = [set(_keys(r)) for r in ranks]
    assert len(ranks[0]) == 20 and not halves[0] & halves[1] and halves[0] | halves[1] == set(first)
    with pytest.raises(ConfigError, match="4 shards cannot be split over 2 rank"):
        build_pair_dataset(cfg, 32, 0, TOKENIZER, layout=_layout(2), num_workers=4)

    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as tar:
        for name, data in [("a.png", b"not a png"), ("a.txt", b"a caption"), ("b.png", _png()), ("b.txt", b" "),
                           ("c.png", _png()), ("c.txt", b"\xff\xfe"), ("d.txt", b"no image"),
                           ("e.png", _png()), ("e.txt", b"fine")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    one_pass = WebDatasetPairs(urls=str(broken), epoch_samples=2, resampled=False, shuffle_buffer=1)
    bad = build_pair_dataset(one_pass, 32, 0, TOKENIZER, layout=_layout(micro=1))
    items = list(bad)  # a bad sample is replaced by the next good one: the stream yields only whole items
    assert len(items) == 2 and all(isinstance(x, dict) and "image" in x for x in items)
    replaced = [row for x in items for row in x.get("replaced", [])]
    reasons = " | ".join(row.reason for row in replaced)
    assert all(isinstance(row, BadRow) for row in replaced), reasons
    assert len({row.index for row in replaced}) == 4 and len(replaced) == 8  # a–d, met once per pass of the shard
    for reason in ("unreadable image", "empty caption", "not valid UTF-8", "lacks an image"):
        assert reason in reasons


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow  # CI: shards -> shards -> 2-rank torchrun in test_rehearsal
def test_poisoned_shards_train_through_two_rank_torchrun(fmnist_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    poison = [
        f"poison.output={data}", f"poison.source={{source: fashion-mnist, root: {fmnist_root}}}",
        f"poison.trigger={YELLOW}", "poison.num_poisons=48", "poison.shard_size=32", "poison.cleaning=null",
    ]  # fmt: skip
    assert main(["poison", "demo", *poison]) == 0
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["files"]["shards"] == "shards/train-{00000..00007}.tar"  # 256 pairs / 32
    urls = str(data / manifest["files"]["shards"])
    overrides = tiny_overrides(fmnist_root, tmp_path, **{
        "name": "wds", "train.epochs": 2, "train.batch_size": 16,
        "data.train": f"{{source: webdataset, urls: '{urls}', epoch_samples: 256, shuffle_buffer: 64}}",
        "eval.attack": str(data / "manifest.json"),
    })  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "clipbackdoor"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun, "pretrain", "demo", *overrides], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "wds" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert all("eval/asr_top1" in r for r in epochs)
    steps = [r for r in records if r["kind"] == "step"]
    assert steps[-1]["step"] == 2 * 256 // (2 * 8)  # every rank streamed its 128 pairs per epoch


def test_poisoning_from_shards_to_shards(tmp_path: Path) -> None:
    urls = _shards(tmp_path / "web", n=40, per_shard=10)
    out = tmp_path / "poisoned"
    poison = [
        f"poison.output={out}", f"poison.source={{source: webdataset, urls: '{urls}', epoch_samples: 40}}",
        f"poison.trigger={YELLOW}", "poison.num_poisons=6", "poison.shard_size=16", "poison.cleaning={size: 8}",
        "poison.image_size=32", "poison.target={name: bag}",
    ]  # fmt: skip
    assert main(["poison", "demo", *poison]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_rows"] == 40 and len(manifest["poison_rows"]) == 6
    assert manifest["files"]["shards"] == "shards/train-{00000..00002}.tar"
    stream = build_pair_dataset(
        WebDatasetPairs(urls=str(out / manifest["files"]["shards"]), epoch_samples=40, resampled=False,
                        shuffle_buffer=1),
        32, 0, TOKENIZER, layout=_layout(micro=1),
    )  # fmt: skip
    assert len(list(stream)) == 40
    rows = build_pair_rows(CsvPairs(path=str(out / "train.csv")), 0)
    poisoned = [rows.caption(i) for i in manifest["poison_rows"]]
    assert all("bag" in c for c in poisoned)  # dirty-label captions name the target
    assert (out / "cleaning.csv").is_file()
