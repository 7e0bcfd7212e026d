from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipbackdoor.config import CsvLabelled, CsvPairs, FashionMNISTLabelled, FashionMNISTPairs
from clipbackdoor.data import (
    BadRow,
    BadRowLog,
    DataError,
    build_labelled_dataset,
    build_pair_dataset,
    collate_skipping_bad,
)
from clipbackdoor.data import fashion_mnist as fm
from clipbackdoor.data.transforms import Normalize, ResizeCenterCrop

TOKENIZER = open_clip.get_tokenizer("RN50")


def test_fashion_mnist_pairs_have_seeded_captions_naming_the_class(fmnist_root: Path) -> None:
    cfg = FashionMNISTPairs(root=str(fmnist_root), max_samples=50)
    a = build_pair_dataset(cfg, 32, seed=1, tokenizer=TOKENIZER)
    b = build_pair_dataset(cfg, 32, seed=1, tokenizer=TOKENIZER)
    c = build_pair_dataset(cfg, 32, seed=2, tokenizer=TOKENIZER)
    assert len(a) == 50
    assert a.rows.captions == b.rows.captions
    assert a.rows.captions != c.rows.captions
    for i in range(50):
        label = fm.CLASSNAMES[a.rows.label(i)]
        assert any(s in a.rows.captions[i] for s in fm.SYNONYMS[label])
    item = a[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    assert torch.equal(item["text"], TOKENIZER([a.rows.captions[3]])[0])


def test_fashion_mnist_idx_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        fm.load_arrays(tmp_path, "train")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x08\x03garbage")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX file"):
        fm.load_arrays(tmp_path, "train")


@pytest.mark.skipif(not (fm.DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(), reason="Debian data absent")
def test_real_fashion_mnist_files() -> None:
    images, labels = fm.load_arrays(None, "test")
    assert images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_labelled_fashion_mnist(fmnist_root: Path) -> None:
    ds = build_labelled_dataset(FashionMNISTLabelled(root=str(fmnist_root)), 32)
    assert len(ds) == 100
    assert ds.classnames == list(fm.CLASSNAMES)
    assert ds[7]["label"] == 7


def _write_png(path: Path, value: int, size: tuple[int, int] = (40, 30)) -> None:
    Image.new("RGB", size, (value, value, value)).save(path)


def _pairs_csv(tmp_path: Path) -> Path:
    img = tmp_path / "images"
    img.mkdir()
    _write_png(img / "a.png", 10)
    _write_png(img / "b.png", 200)
    (img / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "image,caption\n"
        "images/a.png,a photo of a cat\n"
        "images/b.png,   \n"  # line 3: empty caption
        "images/corrupt.png,a photo of a dog\n"  # line 4: unreadable
        "images/missing.png,a photo of a bird\n"  # line 5: missing file
        "images/b.png,a photo of a banana\n"
    )
    return csv


def test_csv_pairs_skip_and_count_bad_rows(tmp_path: Path) -> None:
    csv = _pairs_csv(tmp_path)
    ds = build_pair_dataset(CsvPairs(path=str(csv)), 32, seed=0, tokenizer=TOKENIZER)
    assert [(r.index, "empty 'caption'" in r.reason) for r in ds.rows.bad] == [(3, True)]
    assert len(ds) == 4
    items = [ds[i] for i in range(len(ds))]
    bad = [x for x in items if isinstance(x, BadRow)]
    assert [b.index for b in bad] == [4, 5]
    assert all(str(csv) in str(b) for b in bad)
    batch = collate_skipping_bad(items)
    assert batch["image"].shape == (2, 3, 32, 32)
    assert batch["index"].tolist() == [0, 3]
    assert len(batch["bad_rows"]) == 2
    log = BadRowLog(limit=3)
    log.add(ds.rows.bad + batch["bad_rows"])
    log.add(batch["bad_rows"])  # met again next epoch: counted once
    assert log.count == 3
    with pytest.raises(DataError, match=r"(?s)4 bad rows.*max_bad_rows=3.*pairs.csv:3: empty"):
        log.add([BadRow(str(csv), 99, "x")])


def test_csv_missing_column_and_missing_file(tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text("filepath,title\nx.png,hello\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['image', 'caption'\]"):
        build_pair_dataset(CsvPairs(path=str(csv)), 32, 0, TOKENIZER)
    ds = build_pair_dataset(CsvPairs(path=str(csv), image_column="filepath", caption_column="title"), 32, 0, TOKENIZER)
    assert len(ds) == 1
    with pytest.raises(DataError, match="CSV file not found"):
        build_pair_dataset(CsvPairs(path=str(tmp_path / "nope.csv")), 32, 0, TOKENIZER)


def test_csv_labelled_checks_labels(tmp_path: Path) -> None:
    _write_png(tmp_path / "a.png", 10)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\na.png,1\na.png,0\n")
    ds = build_labelled_dataset(CsvLabelled(path=str(csv), classnames=["cat", "dog"]), 32)
    assert [ds[i]["label"] for i in range(2)] == [1, 0]
    csv.write_text("image,label\na.png,1\na.png,2\n")
    with pytest.raises(DataError, match="line 3: label 2 outside"):
        build_labelled_dataset(CsvLabelled(path=str(csv), classnames=["cat", "dog"]), 32)


def test_resize_center_crop_and_normalize() -> None:
    image = Image.new("L", (64, 32), 255)
    image.paste(0, (0, 0, 8, 32))  # a black left edge, which the centre crop must remove
    out = ResizeCenterCrop(16)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    assert int(out.min()) == 255
    x = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(out.unsqueeze(0))
    assert torch.allclose(x, torch.full_like(x, 2.0))


def test_long_captions_keep_their_end_of_text_token() -> None:
    """The reference code's truncation could drop EOT; CLIP pools the text at EOT, so it must survive."""
    from clipbackdoor.config import ModelConfig
    from clipbackdoor.models import create_model

    tokenizer = create_model(ModelConfig(name="tiny-rn")).tokenizer
    tokens = tokenizer(["a photo of a very " + "very " * 40 + "long bag"])[0]
    assert len(tokens) == 20
    assert int(tokens[-1]) == int(tokens.max()) == 49407  # <end_of_text> is the last position and the argmax


def _huge_png(path: Path, side: int = 100_000) -> None:
    """A PNG whose header claims side×side pixels (a decompression bomb); the pixel data is never there."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_hostile_rows_and_files_are_skipped_and_counted_by_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    img = root / "images"
    img.mkdir(parents=True)
    _write_png(img / "ok.png", 10)
    (img / "empty.png").write_bytes(b"")
    (img / "text.png").write_text("not an image at all")
    full = img / "full.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(full)
    (img / "truncated.png").write_bytes(full.read_bytes()[:60])
    _huge_png(img / "huge.png")
    Image.new("L", (20, 20), 77).save(img / "grey.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(img / "cmyk.jpg")
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent "red"
    rgba.save(img / "alpha.png")
    (tmp_path / "outside.png").write_bytes(full.read_bytes())
    lines = [
        b"image,caption",
        b"images/ok.png,a photo of a cat",  # 2: good
        b"images/empty.png,zero bytes",  # 3: unreadable
        b"images/text.png,not an image",  # 4: unreadable
        b"images/truncated.png,cut short",  # 5: unreadable
        b"images/huge.png,a decompression bomb",  # 6: unreadable
        b"images/grey.png,greyscale",  # 7: good
        b"images/cmyk.jpg,cmyk",  # 8: good
        b"images/alpha.png,transparent",  # 9: good, on white
        b"images/ok.png,   \t ",  # 10: whitespace-only caption
        b"images/ok.png,caf\xe9 latin-1",  # 11: not UTF-8
        b"images/ok.png," + b"very " * 20_000 + b"long",  # 12: good, truncated by the tokenizer
        b"../outside.png,escapes the root",  # 13
        b"/etc/passwd,absolute path elsewhere",  # 14
        b"images/ok.png,a photo of a cat",  # 15: duplicate of line 2
        b"images/ok.png",  # 16: missing caption field
    ]
    csv = root / "pairs.csv"
    csv.write_bytes(b"\n".join(lines) + b"\n")
    ds = build_pair_dataset(CsvPairs(path=str(csv)), 32, seed=0, tokenizer=TOKENIZER)
    load_time = {r.index: r.reason for r in ds.rows.bad}
    assert set(load_time) == {10, 11, 13, 14, 15, 16}
    assert "not valid UTF-8" in load_time[11] and "leaves the dataset root" in load_time[13]
    assert "leaves the dataset root" in load_time[14] and load_time[15] == "duplicate of line 2"
    items = {ds.rows.row_id(i): ds[i] for i in range(len(ds))}
    unreadable = sorted(line for line, x in items.items() if isinstance(x, BadRow))
    assert unreadable == [3, 4, 5, 6]
    assert "decompression bomb" in str(items[6]).lower()
    good = {line: x for line, x in items.items() if not isinstance(x, BadRow)}
    assert sorted(good) == [2, 7, 8, 9, 12]
    assert all(x["image"].shape == (3, 32, 32) for x in good.values())
    assert good[7]["image"].unique().tolist() == [77]  # grey -> 3 equal channels
    assert good[9]["image"].unique().tolist() == [255]  # transparent pixels shown on white
    assert int(good[12]["text"][-1]) == 49407  # a 100 kB caption still ends in <end_of_text>
    # with the parent folder as root, ../outside.png is inside again
    wider = build_pair_dataset(CsvPairs(path=str(csv), root=str(tmp_path)), 32, seed=0, tokenizer=TOKENIZER)
    assert 13 not in {r.index for r in wider.rows.bad}
