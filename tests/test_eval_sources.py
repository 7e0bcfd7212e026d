import gzip
import shutil
from pathlib import Path

import pytest
from PIL import Image

from clipbackdoor.config import ImageNetLabelled, TorchvisionLabelled
from clipbackdoor.data import DataError, build_labelled_dataset
from clipbackdoor.resolve import load_config


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (50, 40), (i * 60, 0, 0)).save(folder / name, format="JPEG")


def test_imagenet_folder_with_a_labels_file_or_cleanclip_csv(tmp_path: Path) -> None:
    _images(tmp_path / "val", ["a.JPEG", "b.JPEG", "c.JPEG"])
    (tmp_path / "val.txt").write_text("a.JPEG 0\nb.JPEG 999\n\nc.JPEG 954\n")
    ds = build_labelled_dataset(ImageNetLabelled(labels=str(tmp_path / "val.txt"), folder=str(tmp_path / "val")), 32)
    assert len(ds) == 3 and [ds[i]["label"] for i in range(3)] == [0, 999, 954]
    assert len(ds.classnames) == 1000 and ds.classnames[954] == "banana"
    assert len(ds.templates) == 80 and all(t.count("{}") == 1 for t in ds.templates)
    assert ds[1]["image"].shape == (3, 32, 32)

    (tmp_path / "val" / "labels.csv").write_text("image,label\na.JPEG,0\nc.JPEG,954\n")  # CleanCLIP's layout
    ds = build_labelled_dataset(ImageNetLabelled(labels=str(tmp_path / "val" / "labels.csv")), 32)
    assert [ds[i]["label"] for i in range(2)] == [0, 954]

    (tmp_path / "bad.txt").write_text("a.JPEG 0\nb.JPEG 1000\n")
    with pytest.raises(DataError, match=r"bad\.txt: line 2: label 1000 outside"):
        build_labelled_dataset(ImageNetLabelled(labels=str(tmp_path / "bad.txt")), 32)
    cfg = load_config("demo", [f"data.eval={{source: imagenet, labels: {tmp_path / 'val.txt'}}}"])
    assert isinstance(cfg.data.eval, ImageNetLabelled)

    # a subset of the classes: the classifier holds only these, images of the others are left out
    subset = ImageNetLabelled(labels=str(tmp_path / "val.txt"), folder=str(tmp_path / "val"),
                              classes=["banana", "tench"])  # fmt: skip
    ds = build_labelled_dataset(subset, 32)
    assert ds.classnames == ["banana", "tench"] and len(ds) == 2
    assert [ds[i]["label"] for i in range(2)] == [1, 0]  # a.JPEG is class 0 (tench), c.JPEG 954 (banana)
    assert ds.rows.row_id(1) == 4  # still named by its line in val.txt
    with pytest.raises(ValueError, match="not ImageNet class names"):
        ImageNetLabelled(labels="x", classes=["bananas"])


def test_imagenet_labels_file_rows_that_leave_the_folder_are_bad_rows_never_opened(tmp_path: Path) -> None:
    _images(tmp_path / "val", ["a.JPEG"])
    _images(tmp_path / "elsewhere", ["secret.JPEG"])
    (tmp_path / "val" / "out.JPEG").symlink_to(tmp_path / "elsewhere" / "secret.JPEG")
    (tmp_path / "val" / "in.JPEG").symlink_to(tmp_path / "val" / "a.JPEG")  # a link that stays inside: kept
    lines = ["a.JPEG 1", "../elsewhere/secret.JPEG 2", f"{tmp_path / 'elsewhere' / 'secret.JPEG'} 3", "out.JPEG 4",
             "in.JPEG 5"]  # fmt: skip
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    ds = build_labelled_dataset(ImageNetLabelled(labels=str(tmp_path / "val.txt"), folder=str(tmp_path / "val")), 32)
    assert [ds[i]["label"] for i in range(len(ds))] == [1, 5]
    assert [(b.index, "leaves the image folder" in b.reason) for b in ds.rows.bad] == [(2, True), (3, True), (4, True)]


def test_torchvision_dataset_on_disk_and_a_clear_error_when_absent(fmnist_root: Path, tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in fmnist_root.glob("*.gz"):
        with gzip.open(gz) as src, (raw / gz.stem).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    ds = build_labelled_dataset(TorchvisionLabelled(name="FashionMNIST", root=str(tmp_path), max_samples=20), 32)
    assert len(ds) == 20 and ds.classnames[8] == "Bag"
    assert ds[3]["label"] == 3 and ds[3]["image"].shape == (3, 32, 32)
    with pytest.raises(DataError, match="CIFAR10 not found under"):
        build_labelled_dataset(TorchvisionLabelled(name="CIFAR10", root=str(tmp_path)), 32)
    with pytest.raises(DataError, match="no dataset 'Imagenette9'"):
        build_labelled_dataset(TorchvisionLabelled(name="Imagenette9", root=str(tmp_path)), 32)
