"""Two ranks × batch B must give the loss and gradients of one process × batch 2B, for every objective."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from clipbackdoor.config import ModelConfig
from clipbackdoor.models import create_model
from clipbackdoor.objectives import RunShape, WeightedObjective
from clipbackdoor.train.distributed import setup_distributed
from clipbackdoor.train.step import encode

TERMS = {
    "mmcl": {"mmcl": 1.0},
    "mmcl+ssl": {"mmcl": 1.0, "ssl": 1.0},
    "cyclip": {"mmcl": 1.0, "cyclip": 1.0},
    "siglip": {"siglip": 1.0},
    "roclip": {"roclip": {"weight": 1.0, "period": 1}},  # its pool starts empty: the CLIP loss on the views
    "safeclip": {"safeclip": 1.0},  # epoch 1 is its in-modal warm-up: view 2 against view 1's bank neighbours
    "safeclip-no-bank": {"safeclip": {"weight": 1.0, "memory_bank_size": 0}},  # view 2 against view 1
    "safeclip-clip": {"safeclip": {"weight": 1.0, "inmodal_warmup": 0}},  # epoch 1 its CLIP warm-up: across views
}


def objective_for(terms: dict, rank: int, world: int) -> WeightedObjective:
    """The objective of ``terms`` as epoch 1's (first) pass trains it."""
    objective = WeightedObjective(terms, rank, world)
    objective.set_epoch(1)
    objective.begin_pass(objective.passes(1, RunShape(epochs=1, pairs=8, steps_for=lambda n: n))[0])
    return objective


B = 4


def _batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    tokens = lambda: torch.randint(1, 400, (n, 20), generator=g)  # noqa: E731
    return {
        "image": torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
        "image_aug": torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
        "image_aug2": torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
        "text": tokens(),
        "text_aug": tokens(),
        "text_aug2": tokens(),
        "index": torch.arange(n),
    }


def _loss_and_grads(net, bundle, terms, batch, rank, world) -> tuple[float, dict[str, torch.Tensor]]:
    bundle.model.zero_grad(set_to_none=True)
    objective = objective_for(terms, rank, world)
    loss, _ = objective(encode(net, bundle.normalize, batch, torch.device("cpu"), objective.views))
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in bundle.model.named_parameters() if p.grad is not None}


def _model(terms: dict[str, float]):
    torch.manual_seed(0)
    return create_model(ModelConfig(name="tiny-vit", init_logit_bias=-10.0 if "siglip" in terms else None))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    setup_distributed("cpu")
    shard = {k: v[rank * B : (rank + 1) * B] for k, v in _batch(world * B).items()}
    results = {}
    for name, terms in TERMS.items():
        bundle = _model(terms)
        net = DistributedDataParallel(bundle.model)
        results[name] = _loss_and_grads(net, bundle, terms, shard, rank, world)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# CI: implied by test_accumulation (2 ranks = 1 process accumulating = the whole batch, for every objective)
@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_double_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, terms in TERMS.items():
        bundle = _model(terms)
        loss, grads = _loss_and_grads(bundle.model, bundle, terms, _batch(2 * B), 0, 1)
        mean_loss = (ranks[0][name][0] + ranks[1][name][0]) / 2
        assert abs(mean_loss - loss) < 1e-4 * max(1.0, abs(loss)), name
        ddp_grads = ranks[0][name][1]  # DDP has averaged them: every rank holds the same
        assert ddp_grads.keys() == grads.keys(), name
        for key, g in grads.items():
            assert torch.allclose(ddp_grads[key], g, rtol=1e-3, atol=1e-6), f"{name}: {key}"
            assert torch.allclose(ranks[1][name][1][key], g, rtol=1e-3, atol=1e-6), f"{name}: {key}"


@pytest.mark.slow  # CI: every objective under 2 ranks in test_accumulation, the CLI under torchrun in test_rehearsal
def test_torchrun_two_ranks_trains_like_one_process(fmnist_root: Path, tmp_path: Path) -> None:
    """Every objective at once, through the CLI under torchrun (gloo), against a 1-process run: one config,
    the same global batch of 16 on either."""
    import json
    import subprocess
    import sys

    from .conftest import tiny_overrides

    def overrides(name: str, batch: int) -> list[str]:
        return tiny_overrides(fmnist_root, tmp_path, **{
            "name": name, "model.name": "tiny-vit", "train.epochs": 1, "train.batch_size": batch,
            "objective": "{mmcl: 1, ssl: 1, cyclip: 1, siglip: 1}",
        })  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "clipbackdoor.cli"]  # fmt: skip
    subprocess.run([*torchrun, "pretrain", "demo", *overrides("two", 16)], check=True, env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "clipbackdoor.cli", "pretrain", "demo", *overrides("one", 16)],
                   check=True, env=env, capture_output=True)  # fmt: skip
    two, one = ([json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()
                 if '"kind": "epoch"' in x] for n in ("two", "one"))  # fmt: skip
    assert [r["epoch"] for r in two] == [0, 1]
    for key in ("train/loss", "train/mmcl", "train/ssl", "train/cyclip", "train/siglip"):
        assert abs(two[1][key] - one[1][key]) < 1e-3, key
    assert abs(two[1]["eval/clean_top1"] - one[1]["eval/clean_top1"]) <= 2.5  # one image of 40 may flip
