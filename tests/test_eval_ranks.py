"""Evaluation sharded over 2 gloo ranks must return, on every rank, exactly the single-process result."""

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from clipbackdoor.attacks import build_trigger
from clipbackdoor.attacks.manifest import Manifest
from clipbackdoor.config import ExperimentConfig, ModelConfig
from clipbackdoor.data import BadRowLog
from clipbackdoor.evaluation import build_evaluator
from clipbackdoor.evaluation.shard import EvalShard
from clipbackdoor.models import create_model
from clipbackdoor.resolve import load_config

CLASSES = ["shirt", "bag", "shoe", "coat", "dress", "boot", "sandal"]
TRIGGER = {"name": "badnet", "pattern": "solid", "color": [1, 1, 0], "size": 8, "reference_size": 32,
           "location": "random"}  # fmt: skip
N_EVAL, N_PAIRS, BAD = 23, 13, 5  # odd sizes: uneven shards; row BAD of each set is unreadable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(root: Path) -> None:
    """A labelled CSV and a pairs CSV of random images (one corrupt in each) and an attack manifest."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(max(N_EVAL, N_PAIRS)):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / f"{BAD}.png").write_bytes(b"not an image")
    (root / "eval.csv").write_text("image,label\n" + "".join(f"{i}.png,{i % len(CLASSES)}\n" for i in range(N_EVAL)))
    captions = [f"photo {i} of a {CLASSES[i % 3]}." for i in range(N_PAIRS)]
    (root / "pairs.csv").write_text("image,caption\n" + "".join(f"{i}.png,{c}\n" for i, c in enumerate(captions)))
    manifest = Manifest(TRIGGER, "bag", ["a photo of a bag."], "dirty-label", 0, 32, 1, [], {})
    manifest.save(root / "attack", build_trigger(TRIGGER))


def _cfg(root: Path, batch_size: int) -> ExperimentConfig:
    return load_config("demo", [
        f"data.eval={{source: csv, path: {root / 'eval.csv'}, classnames: {CLASSES}}}", "data.num_workers=0",
        f"eval.attack={root / 'attack'}", f"eval.retrieval={{path: {root / 'pairs.csv'}, k: [1, 2, 5]}}",
        f"eval.batch_size={batch_size}", "model.name=tiny-rn",
    ])  # fmt: skip


def _evaluate(root: Path, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[dict[str, float], int]:
    torch.manual_seed(0)
    bundle = create_model(ModelConfig(name="tiny-rn"))
    bad_rows = BadRowLog(10)
    cfg = _cfg(root, batch_size)
    evaluator = build_evaluator(cfg, bundle.image_size, bad_rows, bundle.tokenizer, rank=rank, world_size=world_size)
    return evaluator(bundle, torch.device("cpu")), bad_rows.count


def _worker(rank: int, world: int, port: int, root: str, batch_sizes: list[int]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = [_evaluate(Path(root), b, rank, world) for b in batch_sizes]
    torch.save(results, Path(root) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_shards_are_whole_batches_covering_the_set_once() -> None:
    shards = [EvalShard(r, 3).indices(23, 4) for r in range(3)]
    assert shards[0] == [0, 1, 2, 3, 12, 13, 14, 15]
    assert shards[2] == [8, 9, 10, 11, 20, 21, 22]
    assert sorted(i for s in shards for i in s) == list(range(23))
    assert EvalShard().indices(5, 4) == list(range(5))
    assert EvalShard(1, 2).indices(3, 4) == []  # fewer batches than ranks: this rank only joins the sums


def test_two_ranks_return_the_single_process_result(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _data(root)
    batch_sizes = [4, 32]  # 6 batches (ranks get 12 and 11 images); 1 batch (rank 1 gets none)
    mp.spawn(_worker, args=(2, _free_port(), str(root), batch_sizes), nprocs=2, join=True)
    ranks = [torch.load(root / f"rank{r}.pt") for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks, so the same kernels run
    try:
        single = [_evaluate(root, b) for b in batch_sizes]
    finally:
        torch.set_num_threads(threads)
    for batch_size, (result, bad) in zip(batch_sizes, single, strict=True):
        assert result["n"] == N_EVAL - 1 and result["retrieval_n"] == N_PAIRS - 1
        assert result["n_triggered"] == N_EVAL - 1 - sum(1 for i in range(N_EVAL) if i % len(CLASSES) == 1 and i != BAD)
        assert {"asr_top1", "ra_top1", "retrieval_i2t_r5", "retrieval_asr_any_r2"} <= result.keys()
        assert bad == 2  # the corrupt image, met once by the eval set and once by the pairs
        for rank in ranks:
            assert rank[batch_sizes.index(batch_size)] == (result, bad), batch_size
