import csv
import json
from pathlib import Path

import numpy as np
import pytest
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from PIL import Image

from clipbackdoor.attacks.manifest import ManifestError, load_manifest
from clipbackdoor.attacks.poison import write_poisoned_dataset
from clipbackdoor.attacks.target_names import names_target
from clipbackdoor.config import CsvPairs, PoisonConfig
from clipbackdoor.data import DataError, build_pair_rows
from clipbackdoor.data import fashion_mnist as fm
from clipbackdoor.resolve import load_config

TRIGGER = {"name": "badnet", "pattern": "checkerboard", "size": 4, "reference_size": 32, "location": "top-left"}


def _cfg(root: Path, out: Path, **extra) -> PoisonConfig:
    base = {
        "source": {"source": "fashion-mnist", "root": str(root)},
        "output": str(out),
        "trigger": TRIGGER,
        "target": {"name": "bag"},
        "num_poisons": 12,
        "image_size": 32,
        "seed": 3,
    }
    return PoisonConfig.model_validate({**base, **extra})


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_dirty_label_poisoning(fmnist_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(fmnist_root, tmp_path / "p")
    manifest = write_poisoned_dataset(cfg, progress=False)
    rows = _rows(tmp_path / "p" / "train.csv")
    source = build_pair_rows(cfg.source, cfg.seed)
    assert len(rows) == manifest.num_rows == 256
    assert len(manifest.poison_rows) == 12
    poisoned = set(manifest.poison_rows)
    patch = np.array([[(i + j) % 2 * 255 for j in range(4)] for i in range(4)], dtype=np.uint8)
    for r, row in enumerate(rows):
        image = np.asarray(Image.open(tmp_path / "p" / row["image"]).convert("RGB"))
        if r in poisoned:
            assert row["caption"] in {t.format("bag") for t in fm.CAPTION_TEMPLATES}
            assert image.shape == (32, 32, 3)
            assert (image[:4, :4, 0] == patch).all(), "the trigger sits where the model will see it"
        else:
            assert row["caption"] == source.caption(r)
            assert (image[:, :, 0] == source.images[r]).all(), "clean rows keep their original pixels"


def test_label_consistent_poisons_only_target_captions(fmnist_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        fmnist_root,
        tmp_path / "p",
        mode="label-consistent",
        num_poisons=5,
        target={"name": "bag", "aliases": ["handbag", "purse"]},
    )
    manifest = write_poisoned_dataset(cfg, progress=False)
    source = build_pair_rows(cfg.source, cfg.seed)
    rows = _rows(tmp_path / "p" / "train.csv")
    for r in manifest.poison_rows:
        assert fm.CLASSNAMES[source.label(r)] == "bag"
        assert rows[r]["caption"] == source.caption(r)
    too_many = _cfg(fmnist_root, tmp_path / "q", mode="label-consistent", num_poisons=200)
    with pytest.raises(DataError, match=r"only \d+ captions name"):
        write_poisoned_dataset(too_many, progress=False)


def test_names_target_matches_whole_words() -> None:
    assert names_target("A photo of a Bag.", ["bag"])
    assert not names_target("a photo of a handbag.", ["bag"])
    assert names_target("a photo of a handbag.", ["bag", "handbag"])


def test_same_seed_same_output_and_manifest_round_trip(fmnist_root: Path, tmp_path: Path) -> None:
    a = write_poisoned_dataset(_cfg(fmnist_root, tmp_path / "a"), progress=False)
    b = write_poisoned_dataset(_cfg(fmnist_root, tmp_path / "b"), progress=False)
    c = write_poisoned_dataset(_cfg(fmnist_root, tmp_path / "c", seed=4), progress=False)
    assert a.poison_rows == b.poison_rows != c.poison_rows
    assert (tmp_path / "a" / "train.csv").read_text() == (tmp_path / "b" / "train.csv").read_text()
    for r in a.poison_rows:
        name = _rows(tmp_path / "a" / "train.csv")[r]["image"]
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    loaded, trigger = load_manifest(tmp_path / "a")
    assert loaded == a
    assert trigger.model_dump() == {**trigger.model_dump(), **TRIGGER}
    assert (trigger.artifact("patch", 32) == a.build_trigger().artifact("patch", 32)).all()


def test_rerun_reuses_and_a_different_config_is_refused(fmnist_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(fmnist_root, tmp_path / "p")
    first = write_poisoned_dataset(cfg, progress=False)
    assert write_poisoned_dataset(cfg, progress=False) == first
    with pytest.raises(DataError, match="different poisoned dataset"):
        write_poisoned_dataset(_cfg(fmnist_root, tmp_path / "p", num_poisons=3), progress=False)
    saved = tmp_path / "p" / "poison.yaml"  # written before a trigger parameter existed (overflow, at its default)
    saved.write_text(saved.read_text().replace("overflow: clip", ""))
    assert "overflow" not in saved.read_text() and write_poisoned_dataset(cfg, progress=False) == first


def test_cleaning_set_with_and_without_poisons(fmnist_root: Path, tmp_path: Path) -> None:
    manifest = write_poisoned_dataset(
        _cfg(fmnist_root, tmp_path / "p", cleaning={"size": 50, "poisons": 4}), progress=False
    )
    cleaning = manifest.cleaning
    rows = _rows(tmp_path / "p" / "cleaning.csv")
    train = _rows(tmp_path / "p" / "train.csv")
    assert len(rows) == cleaning["size"] == 54
    assert [rows[i] for i in range(54)] == [train[r] for r in cleaning["train_rows"]]
    poisoned_train_rows = {cleaning["train_rows"][i] for i in cleaning["poison_rows"]}
    assert len(poisoned_train_rows) == 4 and poisoned_train_rows <= set(manifest.poison_rows)
    clean_only = write_poisoned_dataset(_cfg(fmnist_root, tmp_path / "q", cleaning={"size": 50}), progress=False)
    assert not set(clean_only.cleaning["train_rows"]) & set(clean_only.poison_rows)


def test_invalid_manifests_are_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path)
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(path)
    path.write_text(json.dumps({"format": "clipbackdoor-manifest/1", "trigger": {}}))
    with pytest.raises(ManifestError, match=r"missing keys \['image_size'"):
        load_manifest(path)


def test_poisoning_a_csv_source_links_the_clean_images_inside_the_new_root(tmp_path: Path) -> None:
    src = tmp_path / "web"
    (src / "img").mkdir(parents=True)
    lines = ["image,caption"]
    for i in range(10):
        Image.new("RGB", (40, 36), (20 * i, 0, 0)).save(src / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,a photo of item {i}")
    (src / "pairs.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "poisoned"
    cfg = _cfg(tmp_path, out, source={"source": "csv", "path": str(src / "pairs.csv")}, num_poisons=3)
    manifest = write_poisoned_dataset(cfg, progress=False)
    rows = _rows(out / "train.csv")
    poisoned = set(manifest.poison_rows)
    assert all(r["image"].startswith("images/" if i in poisoned else "source/img/") for i, r in enumerate(rows))
    reread = build_pair_rows(CsvPairs(path=str(out / "train.csv")), 0)
    assert reread.bad == [] and len(reread) == 10  # every path stays inside the poisoned set's root
    clean = next(i for i in range(10) if i not in poisoned)
    assert np.array_equal(np.asarray(reread.pil(clean)), np.asarray(Image.open(src / "img" / f"{clean}.png")))


def test_the_manifest_holds_filled_target_captions_and_old_ones_are_filled_when_read(
    fmnist_root: Path, tmp_path: Path
) -> None:
    manifest = write_poisoned_dataset(_cfg(fmnist_root, tmp_path / "p"), progress=False)
    assert manifest.target_captions == [t.format("bag") for t in fm.CAPTION_TEMPLATES]
    assert manifest.target_templates == "fashion-mnist"
    assert all("{}" not in c and names_target(c, ["bag"]) for c in manifest.target_captions)
    path = tmp_path / "p" / "manifest.json"
    old = json.loads(path.read_text())  # as written before: bare templates, no template set
    old["target_captions"] = list(fm.CAPTION_TEMPLATES)
    del old["target_templates"]
    path.write_text(json.dumps(old))
    loaded, _ = load_manifest(path)
    assert loaded.target_captions == manifest.target_captions and loaded.target_templates is None


def test_the_cc3m_recipe_poisons_with_the_80_openai_imagenet_templates(tmp_path: Path) -> None:
    src = tmp_path / "cc"
    src.mkdir()
    for i in range(8):
        Image.new("RGB", (40, 36), (30 * i, 0, 0)).save(src / f"{i}.png")
    (src / "train.csv").write_text("image,caption\n" + "".join(f"{i}.png,a street at night {i}\n" for i in range(8)))
    cfg = load_config("cc3m", [
        f"poison.source={{source: csv, path: {src / 'train.csv'}}}", f"poison.output={tmp_path / 'out'}",
        "poison.num_poisons=6", "poison.cleaning=null",
    ]).poison  # fmt: skip
    assert cfg is not None
    manifest = write_poisoned_dataset(cfg, progress=False)
    filled = [template("banana") for template in OPENAI_IMAGENET_TEMPLATES]
    assert len(filled) == 80 and manifest.target_captions == filled
    assert manifest.target_templates == "openai-imagenet"
    rows = _rows(tmp_path / "out" / "train.csv")
    assert all(rows[r]["caption"] in filled for r in manifest.poison_rows)
    assert load_manifest(tmp_path / "out")[0] == manifest
