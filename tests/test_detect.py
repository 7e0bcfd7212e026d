"""`clipbackdoor detect`: scores that match their definitions, and ids that line up with the manifest."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch

from clipbackdoor.attacks.manifest import load_manifest
from clipbackdoor.cli import main
from clipbackdoor.data.transforms import CLIP_MEAN, CLIP_STD, Normalize
from clipbackdoor.detect import DetectSpec, detection_metrics
from clipbackdoor.detect.batch_protocol import batches, score_batch
from clipbackdoor.detect.run import embed, expected_poisons, image_keys
from clipbackdoor.detect.scores import Neighbours, lid_mle, neighbour_scores, search
from clipbackdoor.models import ClipBundle


def test_scores_match_their_definitions_on_a_hand_computed_case() -> None:
    """k=2. The query's neighbours are reference points 0 and 1 at distances 2 and 4; their own neighbours are
    at distances (1, 2) and (1, 3)."""
    reference = Neighbours(np.array([[1.0, 2.0], [1.0, 3.0], [2.0, 2.5]]), np.array([[1, 2], [0, 2], [0, 1]]))
    query = Neighbours(np.array([[2.0, 4.0]]), np.array([[0, 1]]))
    s = neighbour_scores(query, reference, ("kdist", "lid", "slof", "dao"))
    assert s["kdist"][0] == 4.0
    assert s["lid"][0] == pytest.approx(-1 / ((math.log(2 / 4) + math.log(4 / 4)) / 2))  # = 2 / ln 2
    assert s["slof"][0] == pytest.approx(4 * (1 / 2 + 1 / 3) / 2)  # d_k(x) · mean 1/d_k(o)
    lid0, lid1 = 2 / math.log(2), 2 / math.log(3)  # LID of reference 0 and 1 from (1, 2) and (1, 3)
    assert lid_mle(reference.distances)[:2] == pytest.approx([lid0, lid1])
    assert s["dao"][0] == pytest.approx(math.log(((4 / 2) ** lid0 + (4 / 3) ** lid1) / 2))  # ln DAO


def test_lid_takes_its_own_k_and_the_other_scores_the_references_k() -> None:
    reference = Neighbours(np.array([[1.0, 2.0], [1.0, 3.0]]), np.array([[1, 0], [0, 1]]))
    query = Neighbours(np.array([[1.0, 2.0, 4.0, 8.0]]), np.array([[0, 1, 0, 1]]))
    s = neighbour_scores(query, reference, ("kdist", "lid"), lid_k=4)
    assert s["kdist"][0] == 2.0  # k = 2, the reference's width
    assert s["lid"][0] == pytest.approx(lid_mle(query.distances)[0])  # all 4
    assert neighbour_scores(query, reference, ("lid",))["lid"][0] == pytest.approx(lid_mle(query.distances[:, :2])[0])


def test_distances_are_exact_for_near_duplicates_where_float32_similarity_says_zero() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(40, 64)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    twin = points[0] + np.float32(2e-4) * points[1]  # 1 - cos ≈ 2e-8, under float32's resolution
    reference = np.vstack([points, twin[None]])
    found = search(reference, points[:1], 3, np.array([0]), np.arange(41))
    unit = twin.astype(np.float64) / np.linalg.norm(twin.astype(np.float64))
    exact = np.linalg.norm(points[0].astype(np.float64) - unit)
    assert found.indices[0, 0] == 40 and found.distances[0, 0] == pytest.approx(exact, rel=1e-6)
    similarity = np.float32(points[0] @ (twin / np.linalg.norm(twin)))  # what a float32 search computes
    from_similarity = np.sqrt(max(2.0 - 2.0 * float(similarity), 0.0))
    assert abs(from_similarity - exact) > 0.5 * exact  # 0, or off by more than half


def test_the_papers_batch_protocol_on_a_hand_case() -> None:
    """Neighbours among the batch's images and captions, the image's own caption (its nearest point here) left
    out; the neighbours' own k-distances from the whole batch; the cosine negated."""
    images = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    texts = np.array([[0.0, 0.1], [0.0, 10.0], [0.0, 20.0]])
    s = score_batch(images, texts, ("kdist", "slof", "cosine"), k=2, lid_k=2, seed=0)
    assert s["kdist"][0] == pytest.approx(3.0)  # images 1 and 2 at 1 and 3; its caption at 0.1 does not count
    assert s["kdist"][1] == pytest.approx(math.hypot(1, 0.1))  # image 0 at 1, caption 0 at 1.005
    kdist_1, kdist_2 = math.hypot(1, 0.1), 3.0  # image 1's and image 2's 2nd nearest in the whole batch
    assert s["slof"][0] == pytest.approx(3.0 * (1 / kdist_1 + 1 / kdist_2) / 2)
    cos = (images * texts).sum(1) / np.maximum(np.linalg.norm(images, axis=1) * np.linalg.norm(texts, axis=1), 1e-12)
    assert s["cosine"] == pytest.approx(-cos)
    parts = batches(1000, 300, seed=0)
    assert len(parts) == 3 and {len(p) for p in parts} <= {333, 334} and len(np.unique(np.concatenate(parts))) == 1000


def test_expected_poisons_in_the_reference_and_the_warning_past_k() -> None:
    spec = DetectSpec(Path("d"))
    assert spec.k == 16 and spec.lid_k == 64  # the paper's script
    many = expected_poisons(spec, 0.03, 60_000, 10_000)
    assert many["expected_poisons"] == pytest.approx(300) and "more than k=16" in many["warning"]
    few = expected_poisons(spec, 0.03, 60_000, 500)
    assert few["expected_poisons"] == pytest.approx(15) and "warning" not in few
    given = expected_poisons(DetectSpec(Path("d"), poison_rate=0.001), 0.03, 60_000, 10_000)
    assert given["expected_poisons"] == pytest.approx(10)
    clean = expected_poisons(DetectSpec(Path("d"), reference=Path("clean.csv")), 0.03, 60_000, 3000)
    assert clean["protocol"] == "clean-reference" and clean["expected_poisons"] == 0
    with pytest.raises(ValueError, match="belong to our protocol"):
        DetectSpec(Path("d"), protocol="paper", text=True)


def test_search_finds_the_exact_neighbours_and_leaves_a_query_out_of_its_own() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(60, 8)).astype(np.float32)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    ids = np.arange(100, 160)
    found = search(points, points, 5, ids, ids)
    brute = np.linalg.norm(unit[:, None] - unit[None], axis=-1)
    np.fill_diagonal(brute, np.inf)  # the point itself is not its own neighbour
    assert np.array_equal(found.indices, np.argsort(brute, axis=1)[:, :5])
    assert found.distances == pytest.approx(np.sort(brute, axis=1)[:, :5], abs=1e-5)
    outside = search(points[:30], points[30:], 5)  # queries outside the reference keep all k+1 candidates' first k
    assert (outside.indices < 30).all() and outside.distances.shape == (30, 5)


def test_auroc_path_oracle_constant_and_a_hand_case() -> None:
    ids = np.array([5, 7, 9, 11])
    result = detection_metrics({"hand": np.array([0.9, 0.8, 0.1, 0.5]), "constant": np.zeros(4)}, ids, [5, 11])
    hand = result["detectors"]["hand"]
    assert hand["auroc"] == pytest.approx(0.75)  # 3 of the 4 (poison, clean) pairs ranked right
    assert hand["recall_at_poison_rate"] == 0.5  # the top 2 hold one of the 2 poisons
    assert result["detectors"]["constant"]["auroc"] == 0.5
    assert result["poisons"] == 2 and result["poison_rate"] == 0.5


class YellowPatchModel(torch.nn.Module):
    """A 'model' whose image embedding is the share of pure yellow pixels (the test's trigger): the manifest's
    poisons are exactly the images with that colour, read from the pixels, not from any id."""

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        rgb = images * std + mean
        yellow = ((rgb[:, 0] > 0.9) & (rgb[:, 1] > 0.9) & (rgb[:, 2] < 0.1)).float().mean(dim=(1, 2))
        return torch.stack([yellow, torch.ones_like(yellow)], dim=1)

    def encode_text(self, texts: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return torch.ones(len(texts), 2)


def test_ids_line_up_with_the_manifest_through_dropped_and_unreadable_rows(poisoned: Path, tmp_path: Path) -> None:
    """An oracle that sees only pixels scores AUROC 1.0 against the manifest's rows, also after a row is
    dropped at load (empty caption) and another cannot be decoded: dataset positions then differ from the
    rows' numbers, and only the ids keep them apart."""
    data = tmp_path / "data"
    shutil.copytree(poisoned.parent.parent / "data", data, symlinks=True)
    manifest, _ = load_manifest(data)
    with (data / "train.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    clean = [r for r in range(manifest.num_rows) if r not in set(manifest.poison_rows)]
    rows[1 + clean[0]][1] = ""  # dropped at load: its row number stays taken
    (data / rows[1 + clean[1]][0]).write_bytes(b"not an image")  # skipped while embedding
    with (data / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    bundle = ClipBundle("yellow", YellowPatchModel(), open_clip.get_tokenizer("RN50"), 32, Normalize())
    spec = DetectSpec(data, batch_size=50, chunk_rows=100)
    ids, images, _, skipped = embed(bundle, data / "train.csv", tmp_path / "out", spec, torch.device("cpu"))
    assert len(ids) == manifest.num_rows - 2 and clean[0] not in ids and clean[1] not in ids
    assert len(skipped) == 2 and any("not an image" in s or "unreadable" in s for s in skipped)
    oracle = detection_metrics({"oracle": images[:, 0], "constant": np.zeros(len(ids))}, ids, manifest.poison_rows)
    assert oracle["detectors"]["oracle"]["auroc"] == 1.0 and oracle["detectors"]["constant"]["auroc"] == 0.5
    assert oracle["poisons"] == len(manifest.poison_rows)
    again, *_ = embed(bundle, data / "train.csv", tmp_path / "out", spec, torch.device("cpu"))  # from the chunks
    assert np.array_equal(again, ids) and len(list((tmp_path / "out" / "embeddings").glob("*.npz"))) == 3


def test_detect_cli_scores_a_poisoned_run(poisoned: Path, tmp_path: Path) -> None:
    out = tmp_path / "detect"
    data = poisoned.parent.parent / "data"
    assert main(["detect", str(poisoned), "--data", str(data), "-k", "8", "--text", "--out", str(out)]) == 0
    table = pq.read_table(out / "scores.parquet").to_pydict()
    record = json.loads((out / "metrics.json").read_text())
    expected = {f"{m}_{d}" for m in ("image", "text") for d in ("kdist", "lid", "slof", "dao", "isolation_forest")}
    assert set(table) == {"id", "cosine", *expected} and len(table["id"]) == record["pairs"] == 256
    assert sorted(table["id"]) == list(range(256))
    assert set(record["detection"]["detectors"]) == {"cosine", *expected}
    assert all(0 <= m["auroc"] <= 1 for m in record["detection"]["detectors"].values())
    assert record["search"]["image"]["reference_size"] == 256 and record["search"]["image"]["index"] == "exact"
    assert record["protocol"] == "ours" and record["reference"]["expected_poisons"] == pytest.approx(48)
    assert record["reference"]["poisons_in_reference"] == 48  # the sample is every pair here

    # the paper's protocol: 4 batches of 64 pairs, images only, on the embeddings already written
    assert main(["detect", str(poisoned), "--data", str(data), "-k", "8", "--lid-k", "16", "--protocol", "paper",
                 "--batch-reference", "64", "--out", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["detection"]["detectors"]) == {
        "cosine",
        *(f"image_{d}" for d in ("kdist", "lid", "slof", "dao", "isolation_forest")),
    }
    assert record["protocol"] == "paper" and record["reference"]["pairs"] == 63
    assert record["reference"]["expected_poisons"] == pytest.approx(48 / 256 * 63) and "warning" in record["reference"]
    low, median, high = record["reference"]["poisons_in_batches"]
    assert low <= median <= high and low * 4 <= 48 <= high * 4

    # a clean reference: the cleaning set's pairs are training pairs too, matched by their image file
    cleaning = data / "cleaning.csv"
    assert main(["detect", str(poisoned), "--data", str(data), "-k", "8", "--lid-k", "16", "--reference",
                 str(cleaning), "--out", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "metrics.json").read_text())
    assert record["protocol"] == "clean-reference" and record["reference"]["pairs"] == 64
    codes: dict[str, int] = {}
    train_keys = image_keys(data / "train.csv", np.arange(256), codes)
    assert len(set(image_keys(cleaning, np.arange(64), codes)) & set(train_keys)) == 64
