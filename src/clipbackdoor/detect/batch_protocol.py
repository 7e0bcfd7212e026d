"""The CLIP detection paper's protocol (Huang et al. 2025, github HanxunH/Detect-CLIP-Backdoor-Samples): each
image is scored against the other pairs of its training mini-batch.

What its extract_bd_scores.py and backdoor_sample_detector/ do, and we do under ``protocol: paper``:

- the pairs are shuffled (seeded) and cut into batches of about ``batch`` pairs (its loader's ``train_bs``
  doubled, gathered over the GPUs: ≈ 2k pairs for the paper's runs);
- an image's neighbours are searched among the batch's images *and* captions together (``get_pair_wise_distance``
  on ``[d_v, d_t]``), its own image and its own caption left out, on the raw (unnormalised) embeddings, at
  exact Euclidean distances (its ``compute_mode='donot_use_mm_for_euclid_dist'``);
- a neighbour's own k-distance and LID (SLOF, DAO) come from the whole batch of images and captions;
- k = 16 for k-distance, SLOF and DAO, 64 for LID; the isolation forest (100 trees) is fitted on the batch's
  images and captions and scores the images; the cosine and the forest's score are negated (lower = more
  likely a poison, process_detection_scores.py).

Where its code departs from its own definitions we do not follow it (docs/departures.md): its SLOF and DAO read
the neighbours' k-distances and LIDs at indices of the matrix with the query's own image and caption removed,
so every index past them (all caption indices) points one or two places off; its neighbours' LIDs count their
own zero self-distance among their k nearest; and its k-distance and LID normalise by the (k+1)-th neighbour.
The score formulas are :func:`~clipbackdoor.detect.scores.neighbour_scores`'.
"""

from __future__ import annotations

import numpy as np
import torch

from clipbackdoor.detect.scores import NEIGHBOUR_SCORES, Neighbours, isolation_forest, neighbour_scores


def batches(n: int, batch: int, seed: int) -> list[np.ndarray]:
    """Positions 0..n-1 shuffled with ``seed`` and cut into round(n / batch) batches of nearly equal size
    (none shorter than the others by more than one: the paper's short last batch would be scored against
    fewer pairs)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.array_split(order, max(1, round(n / batch)))


def nearest(distances: torch.Tensor, k: int) -> Neighbours:
    """The ``k`` smallest of each row (ascending) and their columns."""
    found = distances.topk(k, dim=1, largest=False)
    return Neighbours(found.values.numpy(), found.indices.numpy().astype(np.int64))


def score_batch(
    images: np.ndarray, texts: np.ndarray, names: tuple[str, ...], k: int, lid_k: int, seed: int
) -> dict[str, np.ndarray]:
    """The paper protocol's scores of one batch's images (raw embeddings, row i of ``images`` and ``texts`` a
    pair); higher = more likely a poison for every column."""
    b = len(images)
    if 2 * b - 2 < max(k, lid_k):
        raise ValueError(f"a batch of {b} pairs has {2 * b - 2} neighbours per image; k and lid_k need {max(k, lid_k)}")
    points = torch.from_numpy(np.concatenate([images, texts]).astype(np.float64))  # [2b, dim]: images, then texts
    between = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    own = torch.arange(b)
    query = between[:b].clone()
    query[own, own] = torch.inf  # the image itself
    query[own, b + own] = torch.inf  # its own caption
    between.fill_diagonal_(torch.inf)  # a reference point is not its own neighbour
    out: dict[str, np.ndarray] = {}
    wanted = tuple(n for n in names if n in NEIGHBOUR_SCORES)
    if wanted:
        out = neighbour_scores(nearest(query, max(k, lid_k)), nearest(between, k), wanted, lid_k)
    if "isolation_forest" in names:
        raw = points.numpy()
        out["isolation_forest"] = isolation_forest(raw, raw[:b], seed)
    if "cosine" in names:
        unit = points / points.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out["cosine"] = -(unit[:b] * unit[b:]).sum(dim=1).numpy()
    return out


def paper_scores(
    images: np.ndarray, texts: np.ndarray, names: tuple[str, ...], k: int, lid_k: int, parts: list[np.ndarray],
    seed: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Every image's scores under the paper's protocol, each batch (``parts``, from :func:`batches`) scored on
    its own, in the rows' order."""
    out: dict[str, np.ndarray] = {}
    for i, at in enumerate(parts):
        scored = score_batch(images[at], texts[at], names, k, lid_k, seed + i)
        for name, values in scored.items():
            out.setdefault(name, np.empty(len(images)))[at] = values
    return out
