"""The synthetic web-like data set: reproducible, read by the tool's own sources, corrupt where it says."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import open_clip
import pytest
from PIL import Image

from clipbackdoor.attacks.target_names import names_target
from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError, CsvPairs, ImageNetLabelled, WebDatasetPairs
from clipbackdoor.data import BadRow, build_labelled_dataset, build_pair_dataset, build_pair_rows
from clipbackdoor.data.datasets import DECODE_ERRORS
from clipbackdoor.synth import EVAL, TRAIN, SynthManifest, class_looks, imagenet_classnames, synthesize
from clipbackdoor.synth.writers import _rendered

TOKENIZER = open_clip.get_tokenizer("RN50")
SMALL = {"pairs": 60, "eval_images": 20, "classes": 5, "corrupt": 4, "shard_size": 25, "max_side": 400}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthManifest, dict]:
    m = synthesize(tmp_path_factory.mktemp("synth") / "set", **SMALL, target_share=0.2)
    return m, json.loads((m.out / "synth.json").read_text())


def _digest(out: Path) -> str:
    """Hash of every file that was written, names included."""
    h = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(out)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _kinds(record: dict) -> dict[str, list[int]]:
    """Corrupt CSV line numbers by kind."""
    kinds: dict[str, list[int]] = {}
    for c in record["corrupt"]:
        kinds.setdefault(c["kind"], []).append(c["csv_line"])
    return kinds


def test_same_seed_writes_the_same_bytes_another_seed_does_not(tmp_path: Path) -> None:
    args = {"pairs": 24, "eval_images": 10, "classes": 5, "corrupt": 4, "shard_size": 10, "max_side": 300}
    a, b, c = (synthesize(tmp_path / name, **args, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert _digest(a.out) == _digest(b.out)
    assert _digest(a.out) != _digest(c.out)
    assert (a.out / "train.csv").read_bytes() != (c.out / "train.csv").read_bytes()
    for name in ("images/000000001.jpg", "images/000000017.jpg", "imagenet/val/synth_val_00000003.JPEG"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes() != (c.out / name).read_bytes()


def test_worker_processes_draw_the_same_bytes() -> None:
    looks = class_looks("banana", 3)
    jobs = [(TRAIN, i, looks[i % 3], None) for i in range(6)] + [(EVAL, 0, looks[1], "truncated-jpeg")]
    size = {"seed": 5, "min_side": 64, "max_side": 160}
    inline = list(_rendered(jobs, None, **size))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(_rendered(jobs, pool, **size)) == inline


def test_images_have_web_sizes_and_aspect_ratios(synth: tuple[SynthManifest, dict]) -> None:
    m, record = synth
    spoiled = {c["row"] for c in record["corrupt"] if c["kind"] != "empty-caption"}
    sizes = []
    for i in range(m.pairs):
        if i not in spoiled:
            with Image.open(m.out / "images" / f"{i:09d}.jpg") as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                sizes.append(im.size)
    assert all(120 <= side <= 400 for size in sizes for side in size)
    assert len({round(w / h, 1) for w, h in sizes}) >= 5  # several aspect ratios
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)  # both orientations
    assert max(max(s) for s in sizes) - min(min(s) for s in sizes) > 150


def test_csv_reads_through_the_pair_dataset_with_exactly_the_corrupt_rows_bad(
    synth: tuple[SynthManifest, dict],
) -> None:
    m, record = synth
    kinds = _kinds(record)
    assert sorted(kinds) == ["empty-caption", "not-an-image", "truncated-jpeg", "zero-bytes"]
    ds = build_pair_dataset(CsvPairs(path=str(m.csv)), 32, seed=0, tokenizer=TOKENIZER)
    assert [b.index for b in ds.bad] == kinds["empty-caption"]  # dropped at load time
    assert len(ds) == m.pairs - 1
    unreadable = [item.index for item in (ds[i] for i in range(len(ds))) if isinstance(item, BadRow)]
    assert unreadable == sorted(kinds["truncated-jpeg"] + kinds["zero-bytes"] + kinds["not-an-image"])
    item = ds[0]
    assert item["image"].shape == (3, 32, 32)


def test_shards_hold_the_csv_pairs_in_img2dataset_layout(synth: tuple[SynthManifest, dict]) -> None:
    m, record = synth
    assert len(m.shards) == 3 and m.urls.endswith("shards/{00000..00002}.tar")
    with tarfile.open(m.shards[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000000.json").read())  # type: ignore[union-attr]
    assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"]
    assert {"key", "caption", "width", "height"} <= meta.keys()
    rows = build_pair_rows(WebDatasetPairs(urls=m.urls, access="index"), 0)
    empty = [c["row"] for c in record["corrupt"] if c["kind"] == "empty-caption"]
    assert [b.index for b in rows.bad] == empty and "empty caption" in rows.bad[0].reason
    csv_rows = build_pair_rows(CsvPairs(path=str(m.csv)), 0)
    assert [rows.caption(i) for i in range(len(rows))] == [csv_rows.caption(i) for i in range(len(csv_rows))]
    spoiled = {c["row"] for c in record["corrupt"] if c["kind"] != "empty-caption"}
    good = [i for i in range(m.pairs) if i not in spoiled and i not in empty]
    position = {row: k for k, row in enumerate(i for i in range(m.pairs) if i not in empty)}
    for i in good[:3]:  # the same pixels on both paths
        assert rows.pil(position[i]).tobytes() == csv_rows.pil(position[i]).tobytes()
    for i in spoiled:
        with pytest.raises(DECODE_ERRORS):  # at the open (not an image) or at the decode (truncated)
            rows.pil(position[i]).load()


def test_imagenet_folder_labels_the_classes_and_the_target(synth: tuple[SynthManifest, dict]) -> None:
    m, record = synth
    ds = build_labelled_dataset(ImageNetLabelled(labels=str(m.eval_labels), folder=str(m.eval_folder)), 32)
    labels = [ds.rows.label(i) for i in range(len(ds))]
    assert len(ds) == 20 and sorted(set(labels)) == sorted(m.class_indices)
    assert all(labels.count(c) == 4 for c in m.class_indices)  # a few per class
    names = imagenet_classnames()
    assert m.target_index in labels and names[m.target_index] == m.target == "banana"
    assert [names[c["imagenet_index"]] for c in record["classes"]] == m.classes
    item = ds[labels.index(m.target_index)]
    assert item["image"].shape == (3, 32, 32) and item["label"] == m.target_index


def test_captions_name_their_own_class_and_some_the_target(synth: tuple[SynthManifest, dict]) -> None:
    m, record = synth
    names = imagenet_classnames()
    looks = {look.name: look for look in class_looks(m.target, len(m.classes))}
    rows = build_pair_rows(CsvPairs(path=str(m.csv)), 0)
    by_line = {rows.row_id(i): rows.caption(i) for i in range(len(rows))}
    assert len(record["row_classes"]) == m.pairs
    for row, cls in enumerate(record["row_classes"]):
        text = by_line.get(row + 2)
        if text is None:  # the empty caption
            continue
        own = looks[names[cls]]
        assert names_target(text, [own.name, own.plural]), text
        others = [n for n in m.classes if n != own.name]
        assert not names_target(text, others), text
    named = [t for t in by_line.values() if names_target(t, [m.target])]
    assert len(named) == m.target_named > 0
    assert record["target_aliases"] == ["bananas"]
    assert record["row_classes"].count(m.target_index) == round(0.2 * m.pairs)


def test_cli_synth_writes_and_prints_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["synth", str(out), "--pairs", "30", "--eval-images", "6", "--classes", "3", "--corrupt", "2"]
    assert main([*args, "--shard-size", "10", "--seed", "2", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"data.train='{{source: csv, path: {out / 'train.csv'}}}'" in printed
    assert f"urls: '{out}/shards/{{00000..00002}}.tar'" in printed
    assert f"labels: {out / 'imagenet' / 'val.txt'}" in printed
    assert json.loads((out / "synth.json").read_text())["pairs"] == 30
    assert main(args) == 2  # not over an earlier set without --force
    assert "not empty" in capsys.readouterr().err
    assert main([*args, "--force", "--workers", "1"]) == 0


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ImageNet class names"):
        synthesize(tmp_path / "a", target="bananas")
    with pytest.raises(ConfigError, match="classes=40"):
        synthesize(tmp_path / "b", classes=40)
    with pytest.raises(ConfigError, match="corrupt"):
        synthesize(tmp_path / "c", pairs=4, corrupt=4)
    looks = class_looks("ostrich", 3)  # a target outside the shortlist gets a look of its own
    assert looks[0].name == "ostrich" and looks[0].shape and len({lk.name for lk in looks}) == 3
