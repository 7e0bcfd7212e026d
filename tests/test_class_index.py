"""A class given by name must name one class: ImageNet repeats 'missile' (657, 744) and 'sunglasses' (836, 837)."""

from pathlib import Path

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from pydantic import ValidationError

from clipbackdoor.attacks import build_trigger
from clipbackdoor.attacks.manifest import Manifest, ManifestError
from clipbackdoor.config import ImageNetLabelled, class_index
from clipbackdoor.data import BadRowLog, build_labelled_dataset
from clipbackdoor.evaluation import build_evaluator
from clipbackdoor.resolve import load_config

TRIGGER = {"name": "badnet", "pattern": "solid", "color": [1, 1, 0], "size": 8, "reference_size": 32}


def test_a_class_is_named_once_or_given_by_index() -> None:
    assert class_index(IMAGENET_CLASSNAMES, "banana", "k") == 954
    assert class_index(IMAGENET_CLASSNAMES, 744, "k") == 744
    with pytest.raises(ValueError, match=r"k: class name 'missile' is ambiguous, it is class \[657, 744\]"):
        class_index(IMAGENET_CLASSNAMES, "missile", "k")
    with pytest.raises(ValueError, match=r"k: class index 1000 outside \[0, 1000\)"):
        class_index(IMAGENET_CLASSNAMES, 1000, "k")


def test_an_imagenet_subset_takes_indices_and_refuses_a_repeated_name(tmp_path: Path) -> None:
    with pytest.raises(
        ValidationError, match=r"classes\[1\]: class name 'sunglasses' is ambiguous, it is class \[836, 837\]"
    ):
        ImageNetLabelled(labels="x", classes=["banana", "sunglasses"])
    for name in ("a.JPEG", "b.JPEG"):
        Image.new("RGB", (40, 40)).save(tmp_path / name)
    (tmp_path / "val.txt").write_text("a.JPEG 744\nb.JPEG 954\n")
    ds = build_labelled_dataset(ImageNetLabelled(labels=str(tmp_path / "val.txt"), classes=[744, "banana"]), 32)
    assert ds.classnames == ["missile", "banana"] and [ds[i]["label"] for i in range(2)] == [0, 1]


def test_an_attack_whose_target_names_two_eval_classes_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "0.png")
    (tmp_path / "eval.csv").write_text("image,label\n0.png,1\n")
    Manifest(TRIGGER, "missile", ["a photo of a missile."], "dirty-label", 0, 32, 1, [], {}).save(
        tmp_path / "attack", build_trigger(TRIGGER)
    )
    cfg = load_config("demo", [
        f"data.eval={{source: csv, path: {tmp_path / 'eval.csv'}, classnames: [missile, bag, missile]}}",
        f"eval.attack={tmp_path / 'attack'}",
    ])  # fmt: skip
    with pytest.raises(ManifestError, match=r"attack: target: class name 'missile' is ambiguous, it is class \[0, 2\]"):
        build_evaluator(cfg, 32, BadRowLog(0), lambda texts: None)
