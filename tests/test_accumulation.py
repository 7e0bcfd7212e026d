"""Exact gradient accumulation: k micro-batches give the loss and every gradient of the whole batch, with
negatives from the whole batch, for every objective, on a BatchNorm model (tiny-rn) and one without (tiny-vit).
"""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from clipbackdoor.config import ModelConfig
from clipbackdoor.models import create_model
from clipbackdoor.train.distributed import setup_distributed
from clipbackdoor.train.step import StepSettings, forward_backward

from .test_distributed import TERMS, _batch, _free_port, objective_for

B = 8  # the global batch
MODELS = ("tiny-rn", "tiny-vit")


def _model(name: str, terms: dict[str, float]):
    torch.manual_seed(0)
    return create_model(ModelConfig(name=name, init_logit_bias=-10.0 if "siglip" in terms else None))


def _split(batch: dict[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
    return [{key: v.chunk(k)[i] for key, v in batch.items()} for i in range(k)]


def _step(net, ddp, bundle, terms, micro_batches, rank=0, world=1) -> tuple[float, dict[str, torch.Tensor]]:
    bundle.model.zero_grad(set_to_none=True)
    objective = objective_for(terms, rank, world)
    settings = StepSettings(net, ddp, bundle.normalize, torch.device("cpu"), objective)
    loss, _ = forward_backward(settings, micro_batches)
    return float(loss), {n: p.grad.clone() for n, p in bundle.model.named_parameters() if p.grad is not None}


def _assert_same(a: tuple[float, dict], b: tuple[float, dict], what: str) -> None:
    assert abs(a[0] - b[0]) < 1e-4 * max(1.0, abs(b[0])), f"{what}: loss {a[0]} vs {b[0]}"
    assert a[1].keys() == b[1].keys(), what
    for key, g in b[1].items():  # to float noise relative to the tensor's scale (summation order differs)
        error = (a[1][key] - g).abs().max()
        assert error <= 1e-4 * g.abs().max() + 1e-7, f"{what}: {key} off by {error:.2e}"


def _rank_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    setup_distributed("cpu")
    shard = _split(_batch(B), world)[rank]
    results = {}
    for model in MODELS:
        for name, terms in TERMS.items():
            bundle = _model(model, terms)
            net = DistributedDataParallel(bundle.model)
            results[model, name] = _step(net, net, bundle, terms, [shard], rank, world)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_one_process_accumulating_equals_two_ranks(tmp_path: Path) -> None:
    """1 process × 2 micro-batches of B/2 = 2 ranks × B/2: the same BatchNorm groups, the same gradients."""
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for model in MODELS:
        for name, terms in TERMS.items():
            bundle = _model(model, terms)
            accumulated = _step(bundle.model, bundle.model, bundle, terms, _split(_batch(B), 2))
            two_ranks = ((ranks[0][model, name][0] + ranks[1][model, name][0]) / 2, ranks[0][model, name][1])
            _assert_same(accumulated, two_ranks, f"{model} {name}")


@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_equals_the_whole_batch_without_batchnorm(k: int) -> None:
    for name, terms in TERMS.items():
        bundle = _model("tiny-vit", terms)
        whole = _step(bundle.model, bundle.model, bundle, terms, [_batch(B)])
        accumulated = _step(bundle.model, bundle.model, bundle, terms, _split(_batch(B), k))
        _assert_same(accumulated, whole, f"{name} k={k}")


def test_the_caching_pass_does_not_move_batchnorm_statistics() -> None:
    """Running statistics are updated once per micro-batch, as on k ranks, not twice."""
    terms = TERMS["mmcl"]
    once = _model("tiny-rn", terms)
    _step(once.model, once.model, once, terms, _split(_batch(B), 2)[:1])
    accumulated = _model("tiny-rn", terms)
    _step(accumulated.model, accumulated.model, accumulated, terms, _split(_batch(B), 2))
    fresh = _model("tiny-rn", terms)
    moved = [not torch.equal(a, f) for a, f in zip(accumulated.model.buffers(), fresh.model.buffers(), strict=True)]
    assert any(moved)  # the grad passes did update them
    # two micro-batches -> two momentum updates: tracked-batch counters say 2, not 4
    counts = {n: int(b) for n, b in accumulated.model.named_buffers() if n.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {2}
