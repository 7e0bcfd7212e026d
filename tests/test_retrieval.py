import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipbackdoor.attacks import build_trigger
from clipbackdoor.attacks.manifest import Manifest
from clipbackdoor.attacks.target_names import names_target, names_target_or_plural
from clipbackdoor.cli import main
from clipbackdoor.data import BadRowLog
from clipbackdoor.evaluation import build_evaluator
from clipbackdoor.evaluation.retrieval import hit_rate_at_k, recall_at_k, study_retrieval_asr
from clipbackdoor.models import create_model
from clipbackdoor.resolve import load_config

TRIGGER = {"name": "badnet", "pattern": "solid", "color": [1, 1, 0], "size": 8, "reference_size": 32,
           "location": "random"}  # fmt: skip


def test_recall_and_hit_rate_on_a_constructed_similarity() -> None:
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.5],  # row 0: its truth (col 0) first
            [0.8, 0.2, 0.1, 0.0],  # row 1: its truth (col 1) second
            [0.7, 0.6, 0.1, 0.9],  # row 2: its truth (col 2) last
        ]
    )
    truth = torch.tensor([0, 1, 2])
    assert recall_at_k(sim, truth, (1, 2, 4)) == {1: 100 / 3, 2: 200 / 3, 4: 100.0}
    wanted = torch.tensor([False, False, False, True])  # column 3: a caption naming the target
    assert hit_rate_at_k(sim, wanted, (1, 2)) == {1: 100 / 3, 2: 200 / 3}


def test_retrieval_metrics_are_recorded_with_the_zero_shot_ones(poisoned: Path, tmp_path: Path) -> None:
    data = poisoned.parent.parent / "data"
    out = tmp_path / "eval.json"
    spec = f"eval.retrieval={{path: {data / 'cleaning.csv'}, k: [1, 5], max_samples: 32}}"
    assert main(["evaluate", str(poisoned), "--out", str(out), spec]) == 0
    record = json.loads(out.read_text())
    assert record["eval/retrieval_n"] == 32
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "asr_any_r1", "asr_any_r5", "asr_half_r1", "asr_half_r5"):
        assert 0.0 <= record[f"eval/retrieval_{key}"] <= 100.0, key
    assert record["eval/retrieval_i2t_r5"] >= record["eval/retrieval_i2t_r1"]
    assert record["eval/retrieval_asr_any_r5"] >= record["eval/retrieval_asr_half_r5"]  # half needs 2 of the 5
    assert "eval/clean_top1" in record and "eval/asr_top1" in record


def _similarity_from_orders(orders: list[list[int]]) -> torch.Tensor:
    """A similarity matrix whose row r ranks the columns as ``orders[r]`` (most similar first)."""
    sim = torch.zeros(len(orders), len(orders[0]))
    for r, order in enumerate(orders):
        for position, column in enumerate(order):
            sim[r, column] = 1.0 - position / 10
    return sim


def test_half_of_k_needs_that_many_target_captions_where_any_needs_one() -> None:
    wanted = torch.tensor([False, False, False, True, True, True])  # columns 3-5: captions naming the target
    sim = _similarity_from_orders(
        [
            [0, 3, 1, 2, 4, 5],  # top 4 holds one target caption: a success for any@4, not for half@4 (needs 2)
            [3, 4, 0, 1, 2, 5],  # two in the top 2
            [0, 1, 2, 3, 4, 5],  # the first at rank 4: any@4 only
            [0, 1, 3, 4, 2, 5],  # two in the top 4
        ]
    )
    ks = (1, 2, 4, 6)  # needed: 1, 1, 2, 3
    assert hit_rate_at_k(sim, wanted, ks, "any") == {1: 25.0, 2: 50.0, 4: 100.0, 6: 100.0}
    assert hit_rate_at_k(sim, wanted, ks, "half") == {1: 25.0, 2: 50.0, 4: 50.0, 6: 100.0}


def _pairs_and_an_old_manifest(root: Path) -> None:
    """Six image–caption pairs, a labelled CSV of the same images and a manifest written before target
    captions were filled (bare templates, no ``target_templates``)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "pairs.csv").write_text("image,caption\n" + "".join(f"{i}.png,photo {i} of a shirt.\n" for i in range(6)))
    (root / "eval.csv").write_text("image,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(6)))
    Manifest(TRIGGER, "bag", [], "dirty-label", 0, 32, 6, [], {}).save(root / "attack", build_trigger(TRIGGER))
    raw = json.loads((root / "attack" / "manifest.json").read_text())
    raw.pop("target_templates", None)
    raw["target_captions"] = ["a photo of a {}.", "a picture of a {}."]
    (root / "attack" / "manifest.json").write_text(json.dumps(raw))


def test_the_gallery_holds_the_filled_target_captions_and_the_chosen_definitions(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _pairs_and_an_old_manifest(root)
    cfg = load_config("demo", [
        f"data.eval={{source: csv, path: {root / 'eval.csv'}, classnames: [shirt, bag]}}", "model.name=tiny-rn",
        f"eval.attack={root / 'attack'}", f"eval.retrieval={{path: {root / 'pairs.csv'}, k: [1, 2], asr: [half]}}",
    ])  # fmt: skip
    torch.manual_seed(0)
    bundle = create_model(cfg.model)
    tokenized: list[list[str]] = []

    def recording(texts: list[str]) -> torch.Tensor:
        tokenized.append(list(texts))
        return bundle.tokenizer(texts)

    evaluator = build_evaluator(cfg, bundle.image_size, BadRowLog(0), bundle.tokenizer)
    result = evaluator(replace(bundle, tokenizer=recording), torch.device("cpu"))
    assert ["a photo of a bag.", "a picture of a bag."] in tokenized, "the target captions, filled, join the gallery"
    assert not any("{}" in text for texts in tokenized for text in texts)
    assert {k for k in result if k.startswith("retrieval_asr")} == {"retrieval_asr_half_r1", "retrieval_asr_half_r2"}


def test_the_studys_retrieval_asr_on_a_hand_case() -> None:
    """Gallery = the test captions only; every image counts (also one whose caption names the target); hits =
    captions naming the target, plurals and any case included, and the semantic_k nearest to the target
    captions' mean; a success at k needs max(1, k // 2) hits."""
    captions = ["two Bananas on a table", "a dog", "a cat", "a car"]
    named = torch.tensor([names_target_or_plural(c, ["banana"]) for c in captions])
    assert named.tolist() == [True, False, False, False]
    assert not names_target(captions[0], ["banana"]), "ours matches the whole word only"
    assert not names_target_or_plural("a bananasplit", ["banana"])
    text = torch.eye(4)  # caption j's embedding is e_j: an image row below is its similarity to each caption
    target_text = F.normalize(torch.tensor([[0.1, 0.0, 1.0, 0.0], [0.0, 0.1, 1.0, 0.0]]), dim=1)  # near caption 2
    triggered = torch.tensor([
        [1.0, 0.5, 0.0, 0.0],  # caption 0 first: named
        [0.0, 1.0, 0.0, 0.5],  # captions 1, 3: no hit at any k < 4
        [0.0, 0.2, 1.0, 0.0],  # caption 2 first: the semantic hit
        [0.5, 0.0, 0.0, 1.0],  # caption 3, then 0: a hit at k = 2
    ])  # fmt: skip
    asr = study_retrieval_asr(triggered, text, named, target_text, (1, 2, 4), semantic_k=1)
    assert asr == {1: 50.0, 2: 75.0, 4: 100.0}  # k = 4 needs 2 hits: captions 0 and 2 are in every top 4
    without_semantic = study_retrieval_asr(triggered, text, named, target_text, (1,), semantic_k=0)
    assert without_semantic == {1: 25.0}
