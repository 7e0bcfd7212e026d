"""``clipbackdoor detect``: score every training pair of a CSV dataset with a model's own embeddings.

Steps, each kept on disk so an interrupted run resumes where it stopped:

1. embed: the model's raw image and caption embeddings of every pair, in chunks of ``chunk_rows`` rows
   (``embeddings/chunk-00000.npz``...); a chunk already written is not recomputed;
2. neighbours and scores, under one of three protocols, each named in ``metrics.json``:

   - ``ours``: a seeded random sample of ``reference_size`` pairs is the reference set, per modality (images
     against images, captions against captions), on L2-normalised embeddings; each pair's nearest reference
     points come from faiss (exact, or IVF with its measured recall);
   - ``paper``: the detection paper's, each image against the other images and captions of its shuffled
     batch of ``batch_reference`` pairs, raw embeddings (:mod:`clipbackdoor.detect.batch_protocol`);
   - ``clean-reference`` (``reference`` given: a CSV of pairs assumed clean, e.g. the cleaning set ``poison``
     writes; the paper's fallback): ours, against every pair of that set, a pair never its own neighbour;

   every detector in ``detectors`` (``kdist``, ``lid``, ``slof``, ``dao``, ``isolation_forest`` and ``cosine``,
   the pair's image–caption similarity, negated in the paper's protocol) goes to ``scores.parquet`` keyed by
   ``id`` (the row's place among the CSV's data rows, which is how a poison manifest numbers them);
3. with a manifest for the data: AUROC, AUPRC and the recall at the poison rate of each score column, to
   ``metrics.json``; with the data's poison rate (the manifest's, or ``poison_rate``), the number of poisons
   expected in the reference next to k, and a warning when it exceeds k: a poison cluster larger than k is
   its own neighbourhood, and every local score (the paper's too) ranks its members as inliers.

Rows whose image cannot be read are left out of the scores and listed in ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from clipbackdoor.attacks.manifest import Manifest, load_manifest
from clipbackdoor.config import CsvPairs
from clipbackdoor.data import build_pair_dataset, build_pair_rows, collate_skipping_bad
from clipbackdoor.detect.batch_protocol import batches, paper_scores
from clipbackdoor.detect.scores import (
    NEIGHBOUR_SCORES,
    build_index,
    isolation_forest,
    neighbour_scores,
    normalized,
    search,
)
from clipbackdoor.models import ClipBundle

DETECTORS = (*NEIGHBOUR_SCORES, "isolation_forest", "cosine")
QUERY_BLOCK = 65_536  # queries searched at once: bounds the memory of one search to block × (k+1)
RECALL_PROBES = 1_000  # queries whose IVF neighbours are checked against an exact search


@dataclass
class DetectSpec:
    """What to score and how (the CLI's options)."""

    data: Path  # a CSV of pairs, or a folder written by `poison` (its train.csv and manifest.json)
    detectors: tuple[str, ...] = ("kdist", "lid", "slof", "dao", "isolation_forest", "cosine")
    k: int = 16  # k-distance, SLOF, DAO: the paper's script (extract_bd_scores.py --k 16)
    reference_size: int = 10_000  # ours: pairs drawn as the reference
    text: bool = False  # ours: also score the caption embeddings
    seed: int = 0
    batch_size: int = 256
    num_workers: int = 0
    chunk_rows: int = 50_000
    ivf_lists: int | None = None  # None: exact search
    nprobe: int = 16
    lid_k: int = 64  # LID's own neighbours: the paper's script (LIDDetector(k=64))
    protocol: Literal["ours", "paper"] = "ours"
    batch_reference: int = 2048  # paper: pairs per batch (its train_bs 1024, doubled for detection)
    reference: Path | None = None  # a CSV of pairs assumed clean: the clean-reference protocol
    poison_rate: float | None = None  # for the expected poisons in the reference when no manifest says

    def __post_init__(self) -> None:
        unknown = [d for d in self.detectors if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; choose from {list(DETECTORS)}")
        if self.k < 1 or self.lid_k < 2 or self.reference_size <= max(self.k, self.lid_k):
            raise ValueError(
                f"k={self.k}, lid_k={self.lid_k}, reference_size={self.reference_size}: need k >= 1, lid_k >= 2 "
                "and reference_size > both"
            )
        if self.protocol == "paper" and (self.reference is not None or self.text or self.ivf_lists is not None):
            raise ValueError(
                "protocol paper scores each image against its own batch (images and captions together): "
                "--reference, --text and --ivf-lists belong to our protocol"
            )

    @property
    def protocol_name(self) -> str:
        """``ours``, ``paper`` or ``clean-reference``: what metrics.json and the tables name."""
        return "clean-reference" if self.reference is not None else self.protocol


def data_files(data: Path) -> tuple[Path, list[int] | None]:
    """The CSV to score, and the positions of its poisoned rows when a manifest beside it says."""
    folder, csv_path = (data, data / "train.csv") if data.is_dir() else (data.parent, data)
    if not (folder / "manifest.json").is_file():
        return csv_path, None
    manifest, _ = load_manifest(folder)
    return csv_path, poison_positions(manifest, csv_path.name)


def poison_positions(manifest: Manifest, csv_name: str) -> list[int] | None:
    """Poisoned rows of ``csv_name`` as the manifest numbers them (train.csv, or the cleaning set)."""
    if csv_name == manifest.files.get("train", "train.csv"):
        return list(manifest.poison_rows)
    if manifest.cleaning is not None and csv_name == manifest.files.get("cleaning"):
        return list(manifest.cleaning["poison_rows"])
    return None


@torch.no_grad()
def embed(
    bundle: ClipBundle, csv_path: Path, out: Path, spec: DetectSpec, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(ids, raw image embeddings, raw caption embeddings, unreadable rows), chunk by chunk, resumable (a
    chunk of normalised embeddings, as earlier versions wrote, is made again)."""
    dataset = build_pair_dataset(CsvPairs(path=str(csv_path)), bundle.image_size, spec.seed, bundle.tokenizer)
    rows = dataset.rows
    model, normalize = bundle.model.to(device).eval(), bundle.normalize.to(device)
    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    parts, skipped = [], [str(b) for b in dataset.bad]
    for c, start in enumerate(range(0, len(dataset), spec.chunk_rows)):
        path = out / "embeddings" / f"chunk-{c:05d}.npz"
        if path.is_file() and "raw" not in np.load(path, allow_pickle=True).files:
            path.unlink()
        if not path.is_file():
            positions = range(start, min(start + spec.chunk_rows, len(dataset)))
            loader = DataLoader(Subset(dataset, positions), batch_size=spec.batch_size, num_workers=spec.num_workers,
                                collate_fn=collate_skipping_bad)  # fmt: skip
            index, images, texts, bad = [], [], [], []
            for batch in loader:
                bad += [str(b) for b in batch["bad_rows"]]
                if "image" not in batch:
                    continue
                index.append(batch["index"].numpy())
                images.append(model.encode_image(normalize(batch["image"].to(device))).float().cpu())
                texts.append(model.encode_text(batch["text"].to(device)).float().cpu())
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, index=np.concatenate(index), image=torch.cat(images).numpy(), text=torch.cat(texts).numpy(),
                     bad=np.array(bad, dtype=object), raw=True)  # fmt: skip
            tmp.replace(path)  # whole chunks only: a run killed mid-chunk redoes that chunk
        with np.load(path, allow_pickle=True) as part:
            parts.append({k: part[k] for k in ("index", "image", "text")})
            skipped += [str(b) for b in part["bad"]]
    index = np.concatenate([p["index"] for p in parts])
    ids = np.asarray(rows.ordinals, dtype=np.int64)[index]
    texts = np.concatenate([p["text"] for p in parts])
    return ids, np.concatenate([p["image"] for p in parts]), texts, skipped


def sample_reference(embeddings: np.ndarray, ids: np.ndarray, spec: DetectSpec) -> tuple[np.ndarray, np.ndarray]:
    """Our protocol's reference: a seeded sample of ``reference_size`` of the scored pairs (embeddings, ids)."""
    rng = np.random.default_rng(spec.seed)
    at = np.sort(rng.choice(len(ids), size=min(spec.reference_size, len(ids)), replace=False))
    return embeddings[at], ids[at]


def score_modality(
    embeddings: np.ndarray, ids: np.ndarray, spec: DetectSpec, reference: tuple[np.ndarray, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every neighbour and forest score of one modality's embeddings against ``reference`` (its embeddings and
    ids: a query is never its own neighbour), on normalised vectors, and facts about the search."""
    reference_vectors, reference_ids = reference  # raw: search normalises (in float64 for the distances)
    if len(reference_ids) <= max(spec.k, spec.lid_k):
        raise ValueError(f"the reference holds {len(reference_ids)} pairs; k={spec.k}, lid_k={spec.lid_k} need more")
    index = build_index(reference_vectors, spec.ivf_lists, spec.nprobe)
    kind = "exact" if spec.ivf_lists is None else f"IVF {spec.ivf_lists} lists, nprobe {spec.nprobe}"
    facts: dict[str, Any] = {"reference_size": len(reference_ids), "index": kind}
    if spec.ivf_lists is not None:
        facts["ivf_recall_at_k"] = ivf_recall(reference_vectors, embeddings, ids, reference_ids, index, spec)
    wanted = tuple(d for d in spec.detectors if d in NEIGHBOUR_SCORES)
    out: dict[str, np.ndarray] = {}
    if wanted:
        own = search(reference_vectors, reference_vectors, spec.k, reference_ids, reference_ids, index)
        blocks = []
        for s in range(0, len(ids), QUERY_BLOCK):
            block = slice(s, s + QUERY_BLOCK)
            found = search(reference_vectors, embeddings[block], max(spec.k, spec.lid_k), ids[block], reference_ids,
                           index)  # fmt: skip
            blocks.append(neighbour_scores(found, own, wanted, spec.lid_k))
        out = {name: np.concatenate([b[name] for b in blocks]) for name in wanted}
    if "isolation_forest" in spec.detectors:
        out["isolation_forest"] = isolation_forest(normalized(reference_vectors), normalized(embeddings), spec.seed)
    return out, facts


def ivf_recall(
    reference: np.ndarray, embeddings: np.ndarray, ids: np.ndarray, reference_ids: np.ndarray, index: object,
    spec: DetectSpec,
) -> float:  # fmt: skip
    """Share of the exact k nearest neighbours the IVF search finds, over a seeded sample of queries."""
    rng = np.random.default_rng(spec.seed + 1)
    probe = rng.choice(len(ids), size=min(RECALL_PROBES, len(ids)), replace=False)
    approx = search(reference, embeddings[probe], spec.k, ids[probe], reference_ids, index).indices
    exact = search(reference, embeddings[probe], spec.k, ids[probe], reference_ids).indices
    return float(np.mean([len(set(a) & set(e)) / spec.k for a, e in zip(approx, exact, strict=True)]))


def detection_metrics(scores: dict[str, np.ndarray], ids: np.ndarray, poisons: list[int]) -> dict[str, Any]:
    """AUROC, AUPRC and recall at the poison rate (the share of poisons among the top-m scores, m = number
    of poisons) of every score column, against the manifest's poisoned rows."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = np.isin(ids, np.asarray(poisons, dtype=np.int64))
    m = int(truth.sum())
    if m == 0 or m == len(truth):
        raise ValueError(f"{m} of {len(truth)} scored rows are poisoned: AUROC needs both kinds")
    out = {}
    for name, score in scores.items():
        top = np.argsort(-score, kind="stable")[:m]
        out[name] = {
            "auroc": float(roc_auc_score(truth, score)),
            "auprc": float(average_precision_score(truth, score)),
            "recall_at_poison_rate": float(truth[top].mean()),
        }
    return {"poisons": m, "pairs": len(truth), "poison_rate": m / len(truth), "detectors": out}


def image_keys(csv_path: Path, ids: np.ndarray, codes: dict[str, int]) -> np.ndarray:
    """An integer per row (by ``ids``, the rows' ordinals) naming its image file, resolved: the same number for
    the same file in two CSVs (``codes`` is shared), so a pair found in a clean reference is not its own
    neighbour."""
    rows = build_pair_rows(CsvPairs(path=str(csv_path)), 0)
    by_ordinal = {o: os.path.realpath(rows.root / image) for o, image in zip(rows.ordinals, rows.images, strict=True)}
    return np.array([codes.setdefault(by_ordinal[int(i)], len(codes)) for i in ids], dtype=np.int64)


def expected_poisons(spec: DetectSpec, rate: float | None, pairs: int, reference_pairs: int) -> dict[str, Any]:
    """The reference's size, the poisons expected in it at the data's rate (none assumed in a clean one), k,
    and the warning when they outnumber k."""
    rate = spec.poison_rate if spec.poison_rate is not None else rate
    facts: dict[str, Any] = {"protocol": spec.protocol_name, "pairs": reference_pairs, "k": spec.k, "lid_k": spec.lid_k}
    if spec.reference is not None:
        facts["expected_poisons"] = 0.0  # assumed clean: the protocol's premise
    elif rate is not None:
        facts["poison_rate"] = rate
        facts["expected_poisons"] = rate * reference_pairs
        if facts["expected_poisons"] > spec.k:
            facts["warning"] = (
                f"about {facts['expected_poisons']:.0f} poisoned pairs are expected among the {reference_pairs:,} "
                f"reference pairs, more than k={spec.k}: a poison cluster larger than k is its own neighbourhood, "
                "and every local score (k-distance, LID, SLOF, DAO; the paper's too, which assumes a low poisoning "
                "rate in its batch) then ranks its members as inliers. Use a smaller reference "
                "(--reference-size, --batch-reference) or a clean one (--reference CSV)"
            )
    return facts


def paper_columns(
    images: np.ndarray, texts: np.ndarray, ids: np.ndarray, spec: DetectSpec, poisons: list[int] | None
) -> tuple[dict[str, np.ndarray], int, dict[str, Any]]:
    """The paper protocol's score columns, the pairs an image is scored against, and (with the manifest) how
    many poisons its batches actually held: min, median, max."""
    parts = batches(len(ids), spec.batch_reference, spec.seed)
    scores = paper_scores(images, texts, spec.detectors, spec.k, spec.lid_k, parts, spec.seed)
    columns = {("cosine" if n == "cosine" else f"image_{n}"): v for n, v in scores.items()}
    found = {}
    if poisons is not None:
        held = [int(np.isin(ids[at], poisons).sum()) for at in parts]
        found["poisons_in_batches"] = [min(held), float(np.median(held)), max(held)]
    return columns, round(len(ids) / len(parts)) - 1, found  # the other pairs of an image's batch


def our_columns(
    bundle: ClipBundle, csv_path: Path, loaded: tuple[np.ndarray, np.ndarray, np.ndarray], spec: DetectSpec,
    out: Path, device: torch.device, poisons: list[int] | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Our protocol's (or the clean reference's) score columns per modality, the search facts, and (with the
    manifest, for a sampled reference) how many poisons the reference actually holds."""
    ids, images, texts = loaded
    modalities = {"image": images, **({"text": texts} if spec.text else {})}
    columns: dict[str, np.ndarray] = {}
    facts: dict[str, Any] = {}
    found: dict[str, Any] = {}
    if spec.reference is not None:  # clean reference: its own embeddings, matched to the data by image file
        ref_ids, ref_images, ref_texts, _ = embed(bundle, spec.reference, out / "reference", spec, device)
        codes: dict[str, int] = {}
        keys, ref_keys = image_keys(csv_path, ids, codes), image_keys(spec.reference, ref_ids, codes)
        given = {"image": ref_images, "text": ref_texts}
    for modality, embeddings in modalities.items():
        if spec.reference is None:
            pool = sample_reference(embeddings, ids, spec)
            scores, facts[modality] = score_modality(embeddings, ids, spec, pool)
            if poisons is not None:
                found["poisons_in_reference"] = int(np.isin(pool[1], poisons).sum())
        else:
            scores, facts[modality] = score_modality(embeddings, keys, spec, (given[modality], ref_keys))
        columns.update({f"{modality}_{name}": v for name, v in scores.items()})
    if "cosine" in spec.detectors:  # a backdoored model matches its poisons to their captions unusually well
        columns["cosine"] = np.einsum("ij,ij->i", normalized(images), normalized(texts)).astype(np.float64)
    return columns, facts, found


def detect(bundle: ClipBundle, spec: DetectSpec, out: Path, device: torch.device) -> dict[str, Any]:
    """Embed, score and (with a manifest) evaluate; writes ``scores.parquet`` and ``metrics.json`` in ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path, poisons = data_files(spec.data)
    started = time.perf_counter()
    ids, images, texts, skipped = embed(bundle, csv_path, out, spec, device)
    embedded = time.perf_counter()
    facts: dict[str, Any] = {}
    if spec.protocol == "paper":
        scores, reference_pairs, found = paper_columns(images, texts, ids, spec, poisons)
    else:
        scores, facts, found = our_columns(bundle, csv_path, (ids, images, texts), spec, out, device, poisons)
        reference_pairs = facts["image"]["reference_size"]
    columns = {"id": ids, **scores}
    rate = len(poisons) / len(ids) if poisons is not None else None
    reference = {**expected_poisons(spec, rate, len(ids), reference_pairs), **found}
    if spec.reference is not None:
        reference["data"] = str(spec.reference)
    scored = time.perf_counter()
    pq.write_table(pa.table(columns), out / "scores.parquet")
    record: dict[str, Any] = {
        "data": str(csv_path), "pairs": len(ids), "protocol": spec.protocol_name, "k": spec.k, "lid_k": spec.lid_k,
        "seed": spec.seed, "reference": reference, "search": facts,
        "seconds": {"embed": embedded - started, "score": scored - embedded}, "skipped_rows": skipped,
    }  # fmt: skip
    if poisons is not None:
        record["detection"] = detection_metrics({k: v for k, v in scores.items()}, ids, poisons)
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    return record
