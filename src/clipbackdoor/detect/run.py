"""``clipbackdoor detect``: score every training pair of a CSV dataset with a model's own embeddings.

Steps, each kept on disk so an interrupted run resumes where it stopped:

1. embed: the model's image (and, with ``text``, caption) embeddings of every pair, in chunks of
   ``chunk_rows`` rows (``embeddings/chunk-00000.npz``...); a chunk already written is not recomputed;
2. neighbours: a seeded random sample of ``reference_size`` pairs is the reference set; each pair's k nearest
   reference points come from faiss (exact, or IVF with its measured recall);
3. scores: every detector in ``detectors`` (``kdist``, ``lid``, ``slof``, ``dao``, ``isolation_forest``, and
   ``cosine``, the pair's image–caption similarity), per modality, written to ``scores.parquet`` keyed by
   ``id`` (the row's place among the CSV's data rows, which is how a poison manifest numbers them);
4. with a manifest for the data: AUROC, AUPRC and the recall at the poison rate of each score column, to
   ``metrics.json``.

Rows whose image cannot be read are left out of the scores and listed in ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from clipbackdoor.attacks.manifest import Manifest, load_manifest
from clipbackdoor.config import CsvPairs
from clipbackdoor.data import build_pair_dataset, collate_skipping_bad
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
    k: int = 32  # the CLIP detection paper's default (Huang et al. 2025, its detectors' k=32)
    reference_size: int = 10_000
    text: bool = False  # also score the caption embeddings
    seed: int = 0
    batch_size: int = 256
    num_workers: int = 0
    chunk_rows: int = 50_000
    ivf_lists: int | None = None  # None: exact search
    nprobe: int = 16

    def __post_init__(self) -> None:
        unknown = [d for d in self.detectors if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; choose from {list(DETECTORS)}")
        if self.k < 1 or self.reference_size <= self.k:
            raise ValueError(f"k={self.k}, reference_size={self.reference_size}: need 1 <= k < reference_size")


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
    """(ids, image embeddings, caption embeddings, unreadable rows), chunk by chunk, resumable."""
    dataset = build_pair_dataset(CsvPairs(path=str(csv_path)), bundle.image_size, spec.seed, bundle.tokenizer)
    rows = dataset.rows
    model, normalize = bundle.model.to(device).eval(), bundle.normalize.to(device)
    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    parts, skipped = [], [str(b) for b in dataset.bad]
    for c, start in enumerate(range(0, len(dataset), spec.chunk_rows)):
        path = out / "embeddings" / f"chunk-{c:05d}.npz"
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
                images.append(model.encode_image(normalize(batch["image"].to(device)), normalize=True).float().cpu())
                texts.append(model.encode_text(batch["text"].to(device), normalize=True).float().cpu())
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, index=np.concatenate(index), image=torch.cat(images).numpy(), text=torch.cat(texts).numpy(),
                     bad=np.array(bad, dtype=object))  # fmt: skip
            tmp.replace(path)  # whole chunks only: a run killed mid-chunk redoes that chunk
        with np.load(path, allow_pickle=True) as part:
            parts.append({k: part[k] for k in ("index", "image", "text")})
            skipped += [str(b) for b in part["bad"]]
    index = np.concatenate([p["index"] for p in parts])
    ids = np.asarray(rows.ordinals, dtype=np.int64)[index]
    texts = np.concatenate([p["text"] for p in parts])
    return ids, np.concatenate([p["image"] for p in parts]), texts, skipped


def score_modality(
    embeddings: np.ndarray, ids: np.ndarray, spec: DetectSpec
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every neighbour and forest score of one modality's embeddings, and facts about the search."""
    rng = np.random.default_rng(spec.seed)
    reference_at = np.sort(rng.choice(len(ids), size=min(spec.reference_size, len(ids)), replace=False))
    reference, reference_ids = normalized(embeddings[reference_at]), ids[reference_at]
    index = build_index(reference, spec.ivf_lists, spec.nprobe)
    kind = "exact" if spec.ivf_lists is None else f"IVF {spec.ivf_lists} lists, nprobe {spec.nprobe}"
    facts: dict[str, Any] = {"reference_size": len(reference_at), "index": kind}
    if spec.ivf_lists is not None:
        facts["ivf_recall_at_k"] = ivf_recall(reference, embeddings, ids, reference_ids, index, spec)
    wanted = tuple(d for d in spec.detectors if d in NEIGHBOUR_SCORES)
    out: dict[str, np.ndarray] = {}
    if wanted:
        own = search(reference, reference, spec.k, reference_ids, reference_ids, index)
        blocks = []
        for s in range(0, len(ids), QUERY_BLOCK):
            block = slice(s, s + QUERY_BLOCK)
            found = search(reference, embeddings[block], spec.k, ids[block], reference_ids, index)
            blocks.append(neighbour_scores(found, own, wanted))
        out = {name: np.concatenate([b[name] for b in blocks]) for name in wanted}
    if "isolation_forest" in spec.detectors:
        out["isolation_forest"] = isolation_forest(reference, embeddings, spec.seed)
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


def detect(bundle: ClipBundle, spec: DetectSpec, out: Path, device: torch.device) -> dict[str, Any]:
    """Embed, score and (with a manifest) evaluate; writes ``scores.parquet`` and ``metrics.json`` in ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path, poisons = data_files(spec.data)
    started = time.perf_counter()
    ids, images, texts, skipped = embed(bundle, csv_path, out, spec, device)
    embedded = time.perf_counter()
    columns: dict[str, np.ndarray] = {"id": ids}
    facts: dict[str, Any] = {}
    modalities = {"image": images, **({"text": texts} if spec.text else {})}
    for modality, embeddings in modalities.items():
        scores, facts[modality] = score_modality(embeddings, ids, spec)
        columns.update({f"{modality}_{name}": v for name, v in scores.items()})
    if "cosine" in spec.detectors:  # a backdoored model matches its poisons to their captions unusually well
        columns["cosine"] = np.einsum("ij,ij->i", normalized(images), normalized(texts)).astype(np.float64)
    scored = time.perf_counter()
    pq.write_table(pa.table(columns), out / "scores.parquet")
    record: dict[str, Any] = {
        "data": str(csv_path), "pairs": len(ids), "k": spec.k, "seed": spec.seed, "search": facts,
        "seconds": {"embed": embedded - started, "score": scored - embedded}, "skipped_rows": skipped,
    }  # fmt: skip
    if poisons is not None:
        record["detection"] = detection_metrics({k: v for k, v in columns.items() if k != "id"}, ids, poisons)
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    return record
