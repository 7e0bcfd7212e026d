"""Local-density outlier scores of embeddings, from their k nearest neighbours in a reference set.

Backdoor samples sit in sparse neighbourhoods of a poisoned CLIP model's embedding space: the trigger pulls
every poisoned image to one tight spot away from the clean data, and that spot holds few reference points.
Each score is higher for a more likely poison. Distances are Euclidean (between L2-normalised embeddings in
our protocol, a monotone function of the cosine distance; between raw ones in the paper's, see
:mod:`clipbackdoor.detect.batch_protocol`), recomputed in float64 from the vectors for the neighbours found
(:func:`exact_distances`). With ``d_1 <= ... <= d_k`` the distances of x to its k nearest reference points
N_k(x) (x itself excluded when it is one of them):

- ``kdist``: d_k, the k-distance.
- ``lid``: the maximum-likelihood local intrinsic dimensionality (Levina & Bickel 2004; Amsaleg et al.
  2015), LID(x) = -[(1/k) Σ_i ln(d_i / d_k)]^-1, over its own ``lid_k`` nearest (64 in the paper's script,
  extract_bd_scores.py, where k-distance, SLOF and DAO take k = 16).
- ``slof``: simplified LOF (Schubert, Zimek & Kriegel 2014), the mean over o in N_k(x) of dens(o)/dens(x)
  with dens = 1/k-distance: d_k(x) · mean_o 1/d_k(o).
- ``dao``: dimensionality-aware outlier score (Anderberg, Bailey, Campello, Houle, Marques, Radovanović &
  Zimek 2024): mean over o in N_k(x) of (d_k(x)/d_k(o))^LID(o), the density ratio raised to the
  neighbour's own intrinsic dimensionality, so neighbourhoods of different dimensionality compare fairly.
  Reported as its natural logarithm (the same ranking): the powers overflow float64 when a neighbour's LID
  is large. (The CLIP detection paper's code, Huang et al. 2025, averages LID(o)·ln(d_k(x)/d_k(o)) instead:
  the mean of the logs, which can rank points differently; we keep DAO's published form.)

Neighbour searches use faiss (exact inner-product search on normalised vectors; an IVF index when the
reference set is large), never pairwise loops of our own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOUR_SCORES = ("kdist", "lid", "slof", "dao")
EPS = 1e-12
EXACT_BLOCK = 1 << 24  # float64 elements gathered at once to recompute distances (128 MB)


@dataclass(frozen=True)
class Neighbours:
    """Distances (ascending) and reference positions of each query's k nearest reference points."""

    distances: np.ndarray  # [n, k] float64
    indices: np.ndarray  # [n, k] int64, positions in the reference set


def normalized(x: np.ndarray) -> np.ndarray:
    """float32 rows of unit L2 norm (faiss wants contiguous float32)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def search(
    reference: np.ndarray,
    queries: np.ndarray,
    k: int,
    query_ids: np.ndarray | None = None,
    reference_ids: np.ndarray | None = None,
    index: object | None = None,
) -> Neighbours:
    """The k nearest reference points of each query, a query's own entry excluded (matched by id), at
    distances recomputed exactly from the normalised vectors (faiss's float32 similarities round the distance
    of near-duplicates to 0, which LID and DAO divide by).

    ``index``: a faiss index already holding ``reference`` (from :func:`build_index`); exact by default.
    """
    if len(reference) <= k:
        raise ValueError(f"the reference set has {len(reference)} points; k={k} needs at least {k + 1}")
    index = index if index is not None else build_index(reference)
    _, found = index.search(normalized(queries), k + 1)  # one spare, for the query itself
    found = found.astype(np.int64)
    keep = np.ones_like(found, dtype=bool)
    if query_ids is not None and reference_ids is not None:
        keep &= reference_ids[np.maximum(found, 0)] != query_ids[:, None]
    keep &= found >= 0
    if (keep.sum(axis=1) < k).any():  # an IVF search that probed too few cells
        raise ValueError(f"the index found fewer than k={k} neighbours for some queries: raise nprobe")
    # the first k kept per row (a row without a self-match drops its (k+1)-th neighbour)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(found))[:, None]
    found = found[rows, order]
    distances = exact_distances(queries, reference, found, unit=True)
    resort = np.argsort(distances, axis=1, kind="stable")  # the float32 order may swap near-ties
    return Neighbours(distances[rows, resort], found[rows, resort])


def exact_distances(queries: np.ndarray, reference: np.ndarray, indices: np.ndarray, unit: bool) -> np.ndarray:
    """|q - r| in float64 for each query row and its reference rows ``indices`` [n, k] (with ``unit``, of the
    rows normalised in float64), from the differences (not from 2 - 2·similarity, whose cancellation loses
    near-duplicates), a block of queries at a time."""

    def rows(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS) if unit else x

    out = np.empty(indices.shape, dtype=np.float64)
    step = max(1, EXACT_BLOCK // max(1, indices.shape[1] * queries.shape[1]))
    for s in range(0, len(queries), step):
        q = rows(queries[s : s + step])[:, None, :]
        out[s : s + step] = np.linalg.norm(q - rows(reference[indices[s : s + step]]), axis=2)
    return out


def build_index(reference: np.ndarray, ivf_lists: int | None = None, nprobe: int = 16) -> object:
    """A faiss inner-product index over the normalised reference set: exact (``IndexFlatIP``), or inverted
    lists (``ivf_lists`` k-means cells, ``nprobe`` searched) for reference sets too large to scan."""
    import faiss

    reference = normalized(reference)
    dim = reference.shape[1]
    if ivf_lists is None:
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, ivf_lists, faiss.METRIC_INNER_PRODUCT)
        index.train(reference)
        index.nprobe = nprobe
        index.quantizer_keepalive = quantizer  # the index does not own it
    index.add(reference)
    return index


def lid_mle(distances: np.ndarray) -> np.ndarray:
    """LID = -[(1/k) Σ_i ln(d_i/d_k)]^-1 per row; zero distances (duplicates) are floored at EPS."""
    d = np.maximum(distances, EPS)
    logs = np.log(d / d[:, -1:]).mean(axis=1)
    return -1.0 / np.minimum(logs, -EPS)


def neighbour_scores(
    query: Neighbours, reference: Neighbours, names: tuple[str, ...], lid_k: int | None = None
) -> dict[str, np.ndarray]:
    """The named scores of the queries; ``reference`` holds every reference point's own k nearest neighbours
    (for its k-distance and LID), and k is its width. ``query`` holds at least k neighbours, and at least
    ``lid_k`` (default k) for ``lid``, which alone uses more than k."""
    k, lid_k = reference.distances.shape[1], lid_k or reference.distances.shape[1]
    assert query.distances.shape[1] >= max(k, lid_k), "fewer query neighbours than k or lid_k"
    near, near_at = query.distances[:, :k], query.indices[:, :k]
    kdist_q = np.maximum(near[:, -1], EPS)
    kdist_ref = np.maximum(reference.distances[:, -1], EPS)
    out: dict[str, np.ndarray] = {}
    if "kdist" in names:
        out["kdist"] = kdist_q
    if "lid" in names:
        out["lid"] = lid_mle(query.distances[:, :lid_k])
    if "slof" in names:
        out["slof"] = kdist_q * (1.0 / kdist_ref[near_at]).mean(axis=1)
    if "dao" in names:
        from scipy.special import logsumexp  # the detect extra

        lid_ref = lid_mle(reference.distances)
        exponents = lid_ref[near_at] * np.log(kdist_q[:, None] / kdist_ref[near_at])
        out["dao"] = logsumexp(exponents, axis=1) - np.log(k)  # ln of the mean of the powers
    return out


def isolation_forest(reference: np.ndarray, queries: np.ndarray, seed: int) -> np.ndarray:
    """scikit-learn's isolation forest (100 trees) fitted on the reference set, as given (normalise first
    for our protocol; the paper's fits raw features); higher = shorter paths = more anomalous (its
    ``score_samples`` negated, as the paper's process_detection_scores.py does)."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=100, random_state=seed).fit(reference)
    return -forest.score_samples(queries).astype(np.float64)
