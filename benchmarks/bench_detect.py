"""The cost of ``clipbackdoor detect``: embedding, and scoring as pairs and the reference set grow.

- ``scoring``: the neighbour search (faiss, exact) and every detector on random unit vectors of the model's
  embedding width (the cost does not depend on what the vectors show), for growing numbers of pairs and
  reference-set sizes, k = 16 and LID over 64 (``detect``'s defaults, the paper's script). Exact search
  costs pairs × reference × width, so the seconds are fitted as
  ``a + b · pairs · reference`` and projected to 3M pairs (CC3M) — a projection, labelled as one.
- ``embedding``: pairs/s of the embedding pass (decode, resize, both encoders) on generated web-like JPEGs,
  for tiny-rn at its input size and RN50 at 224 px, on this machine's device.
- ``target``: tiny-rn on 100k web-like pairs, embedding + scoring, measured rates × 100k (target < 10 min
  on the 2-core CPU); RN50 and 3M pairs as projections from the measured rates.

    python benchmarks/bench_detect.py                 # writes benchmarks/results/detect.json (minutes)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_result

from clipbackdoor.detect.run import DETECTORS, DetectSpec, embed, sample_reference, score_modality
from clipbackdoor.models import create_model
from clipbackdoor.resolve import load_config
from clipbackdoor.synth import synthesize

K = 16  # detect's default (and LID's own 64)
CC3M_PAIRS = 3_000_000


def scoring_seconds(pairs: int, reference: int, width: int, seed: int = 0) -> float:
    """Seconds to score ``pairs`` random unit vectors with every neighbour detector and the forest."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(pairs, width)).astype(np.float32)
    spec = DetectSpec(Path("."), tuple(d for d in DETECTORS if d != "cosine"), K, reference)
    ids = np.arange(pairs)
    start = time.perf_counter()
    score_modality(vectors, ids, spec, sample_reference(vectors, ids, spec))
    return time.perf_counter() - start


def embedding_rate(model: str, pairs: int, workdir: Path, batch: int) -> tuple[float, int]:
    """Pairs/s of the embedding pass over generated web-like JPEGs, and the model's embedding width."""
    data = workdir / "web"
    if not data.is_dir():
        synthesize(data, pairs=pairs, eval_images=0, corrupt=0, workers=2)
    bundle = create_model(load_config("demo", [f"model.name={model}"]).model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = DetectSpec(data, batch_size=batch, chunk_rows=pairs)
    start = time.perf_counter()
    ids, images, _, _ = embed(bundle, data / "train.csv", workdir / f"out-{model}", spec, device)
    return len(ids) / (time.perf_counter() - start), images.shape[1]


def measured_100k(workdir: Path, pairs: int) -> dict[str, float]:
    """``detect`` end to end with tiny-rn on ``pairs`` generated web-like pairs: embedding and scoring
    (every detector, image and text), timed as a user would run it."""
    from clipbackdoor.detect import detect

    data = workdir / "web-100k"
    synthesize(data, pairs=pairs, eval_images=0, corrupt=0, workers=2)
    bundle = create_model(load_config("demo", ["model.name=tiny-rn"]).model)
    spec = DetectSpec(data, text=True, batch_size=512, num_workers=1)
    start = time.perf_counter()
    record = detect(bundle, spec, workdir / "detect-100k", torch.device("cpu"))
    return {"pairs": record["pairs"], "seconds": time.perf_counter() - start, **record["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--references", type=int, nargs="+", default=[5_000, 10_000, 20_000])
    parser.add_argument("--embed-pairs", type=int, default=2_000, help="web-like pairs embedded per model")
    parser.add_argument("--rn50-pairs", type=int, default=64, help="pairs embedded by RN50 (slow on a CPU)")
    parser.add_argument("--measure", type=int, default=100_000, help="pairs of the end-to-end tiny-rn run (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tiny_rate, tiny_width = embedding_rate("tiny-rn", args.embed_pairs, Path(tmp), batch=256)
        rn50_rate, rn50_width = embedding_rate("RN50", args.rn50_pairs, Path(tmp) / "rn50", batch=16)
    grid = []
    for reference in args.references:
        for pairs in args.pairs:
            if reference < pairs:
                seconds = scoring_seconds(pairs, reference, tiny_width)
                grid.append({"pairs": pairs, "reference": reference, "width": tiny_width, "seconds": seconds})
                print(f"score {pairs:>7,} pairs, reference {reference:>6,}: {seconds:6.1f} s", flush=True)
    work = np.array([g["pairs"] * g["reference"] for g in grid], dtype=np.float64)
    seconds = np.array([g["seconds"] for g in grid])
    slope, intercept = np.polyfit(work, seconds, 1)
    rn50_factor = rn50_width / tiny_width  # exact search and the scores scale with the width

    def projected_scoring(pairs: int, reference: int, factor: float = 1.0) -> float:
        return float(intercept + slope * pairs * reference * factor)

    tiny_100k = 100_000 / tiny_rate + projected_scoring(100_000, 10_000)
    if args.measure:
        with tempfile.TemporaryDirectory() as tmp:
            measured = measured_100k(Path(tmp), args.measure)
        print(f"detect, tiny-rn, {measured['pairs']:,} pairs: {measured['seconds']:.0f} s", flush=True)
    payload = {
        "benchmark": "detect",
        "machine": machine(),
        "k": K,
        "detectors": [d for d in DETECTORS if d != "cosine"],
        "scoring": {"grid": grid, "fit": {"intercept_s": intercept, "s_per_pair_reference": slope}},
        "embedding_pairs_per_s": {"tiny-rn": tiny_rate, "RN50": rn50_rate},
        "embedding_width": {"tiny-rn": tiny_width, "RN50": rn50_width},
        "target_tiny_rn_100k": {
            "target_s": 600,
            "measured": measured if args.measure else None,
            "met": (measured["seconds"] if args.measure else tiny_100k) < 600,
            "estimate_s": tiny_100k,
            "estimate_how": "embedding rate on a small set × 100k + the scoring fit at 100k pairs, reference 10k",
        },
        "projections": {  # labelled: extrapolated from the measured rates, not measured
            "tiny_rn_3M_pairs_reference_10k_s": CC3M_PAIRS / tiny_rate + projected_scoring(CC3M_PAIRS, 10_000),
            "rn50_3M_pairs_reference_10k_s": CC3M_PAIRS / rn50_rate
            + projected_scoring(CC3M_PAIRS, 10_000, rn50_factor),
            "scoring_3M_pairs_reference_10k_s": projected_scoring(CC3M_PAIRS, 10_000),
            "note": "projection from this machine's measured rates (exact faiss search; an IVF index is sublinear "
            "in the reference size)",
        },
    }  # fmt: skip
    path = write_result("detect", payload)
    print(f"{path}: tiny-rn {tiny_rate:.0f} pairs/s, RN50 {rn50_rate:.1f} pairs/s; 100k pairs with tiny-rn "
          f"~{tiny_100k / 60:.1f} min (met: {payload['target_tiny_rn_100k']['met']})")  # fmt: skip


if __name__ == "__main__":
    main()
