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
