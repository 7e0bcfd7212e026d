"""Image paths are checked where they lead, links followed: a link planted in a dataset cannot lead a row out
of it, while the ``source`` link of a poisoned copy the tool wrote still reaches the source's images."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipbackdoor.attacks.poison import write_poisoned_dataset
from clipbackdoor.config import CsvLabelled, CsvPairs, PoisonConfig
from clipbackdoor.data import build_labelled_dataset, build_pair_rows

TRIGGER = {"name": "badnet", "pattern": "checkerboard", "size": 4, "reference_size": 32, "location": "top-left"}


def _image(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (shade, 0, 0)).save(path)
    return path


def _csv(path: Path, images: list[str], column: str = "caption") -> Path:
    """A CSV with a header; row i (line i + 2) names ``images[i]`` with a distinct caption or label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", column])
        writer.writerows([image, f"item {i}" if column == "caption" else str(i % 2)] for i, image in enumerate(images))
    return path


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("link_to", ["file", "folder"])
def test_a_link_inside_the_root_to_an_image_outside_it_is_a_bad_row(tmp_path: Path, link_to: str) -> None:
    root = tmp_path / "data"
    _image(root / "images" / "ok.png", 10)
    secret = _image(tmp_path / "elsewhere" / "secret.png", 200)
    if link_to == "file":
        (root / "images" / "link.png").symlink_to(secret)
        planted = "images/link.png"
    else:
        (root / "escape").symlink_to(secret.parent, target_is_directory=True)
        planted = "escape/secret.png"
    pairs = _csv(root / "pairs.csv", ["images/ok.png", planted])
    rows = build_pair_rows(CsvPairs(path=str(pairs)), seed=0)
    assert rows.images == ["images/ok.png"]
    [bad] = rows.bad
    assert (bad.source, bad.index) == (str(pairs), 3)  # the file and the line a user opens
    assert f"image path {planted!r} leaves the dataset root" in bad.reason
    assert bad.reason.endswith(f"it resolves to {os.path.realpath(secret)}")
    # labelled evaluation CSVs are read by the same rows: refused there too
    labels = _csv(root / "labels.csv", ["images/ok.png", planted], column="label")
    dataset = build_labelled_dataset(CsvLabelled(path=str(labels), classnames=["a", "b"]), 32)
    assert [b.index for b in dataset.rows.bad] == [3]


@pytest.mark.parametrize("source_root", [False, True], ids=["csv-folder", "wider-root"])
def test_a_poisoned_copy_the_tool_wrote_reads_every_row_through_its_source_link(
    tmp_path: Path, source_root: bool
) -> None:
    src = tmp_path / "web"
    for i in range(8):
        _image(src / "img" / f"{i}.png", 20 * i)
    if source_root:  # images beside the CSV's folder, allowed by the source's own root
        pairs = _csv(src / "sub" / "pairs.csv", [f"../img/{i}.png" for i in range(8)])
        source = {"source": "csv", "path": str(pairs), "root": str(src)}
    else:
        pairs = _csv(src / "pairs.csv", [f"img/{i}.png" for i in range(8)])
        source = {"source": "csv", "path": str(pairs)}
    cfg = {"source": source, "trigger": TRIGGER, "target": {"name": "bag"}, "num_poisons": 2, "image_size": 32}
    first = write_poisoned_dataset(PoisonConfig(output=str(tmp_path / "once"), **cfg), progress=False)
    # poisoning the poisoned copy again: its clean rows go through two links, each recorded by a manifest
    again = {**cfg, "source": {"source": "csv", "path": str(tmp_path / "once" / "train.csv")}}
    second = write_poisoned_dataset(PoisonConfig(output=str(tmp_path / "twice"), **again), progress=False)
    for out, manifest in [("once", first), ("twice", second)]:
        rows = build_pair_rows(CsvPairs(path=str(tmp_path / out / "train.csv")), seed=0)
        assert rows.bad == [] and len(rows) == manifest.num_rows == 8
        clean = [i for i in range(8) if i not in manifest.poison_rows]
        assert all(rows.images[i].startswith("source/") for i in clean)
        assert all(_pixels(rows.pil(i)).shape == (32, 32, 3) for i in manifest.poison_rows)
        for i in clean:
            if out == "once" or i not in first.poison_rows:  # else: once's triggered image, read through its link
                original = src / "img" / Path(rows.images[i]).name
                assert np.array_equal(_pixels(rows.pil(i)), _pixels(Image.open(original)))
            else:
                assert _pixels(rows.pil(i)).shape == (32, 32, 3)


def test_the_manifest_allows_its_source_and_nothing_else(tmp_path: Path) -> None:
    src = tmp_path / "web"
    pairs = _csv(src / "pairs.csv", [str(_image(src / f"{i}.png", i).name) for i in range(4)])
    out = tmp_path / "poisoned"
    cfg = PoisonConfig(
        source={"source": "csv", "path": str(pairs)},
        output=str(out),
        trigger=TRIGGER,
        target={"name": "bag"},
        num_poisons=1,
        image_size=32,
    )
    write_poisoned_dataset(cfg, progress=False)
    secret = _image(tmp_path / "elsewhere" / "secret.png", 200)
    (out / "images" / "planted.png").symlink_to(secret)
    train = out / "train.csv"
    train.write_text(train.read_text() + "images/planted.png,a planted row\n")
    rows = build_pair_rows(CsvPairs(path=str(train)), seed=0)
    assert len(rows) == 4  # the clean rows still reach the source
    [bad] = rows.bad
    assert bad.index == 6 and bad.reason.endswith(f"it resolves to {os.path.realpath(secret)}")


def test_links_that_stay_inside_the_root_are_read(tmp_path: Path) -> None:
    root = tmp_path / "data"
    original = _image(root / "images" / "a.png", 90)
    _image(root / "b.png", 150)
    (root / "alias.png").symlink_to(original)
    (root / "deep").symlink_to(root / "images" / "nested", target_is_directory=True)
    (root / "images" / "nested").mkdir()
    # deep/../../b.png follows the link first: images/nested/../../b.png is data/b.png, inside the root,
    # although the same text read without the link would leave it
    pairs = _csv(root / "pairs.csv", ["alias.png", "deep/../../b.png"])
    rows = build_pair_rows(CsvPairs(path=str(pairs)), seed=0)
    assert rows.bad == [] and len(rows) == 2
    assert np.array_equal(_pixels(rows.pil(0)), _pixels(Image.open(original)))
    assert np.array_equal(_pixels(rows.pil(1)), _pixels(Image.open(root / "b.png")))
