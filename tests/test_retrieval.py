import json
from pathlib import Path

import torch

from clipbackdoor.cli import main
from clipbackdoor.evaluation.retrieval import hit_rate_at_k, recall_at_k


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
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "asr_r1", "asr_r5"):
        assert 0.0 <= record[f"eval/retrieval_{key}"] <= 100.0, key
    assert record["eval/retrieval_i2t_r5"] >= record["eval/retrieval_i2t_r1"]
    assert "eval/clean_top1" in record and "eval/asr_top1" in record
