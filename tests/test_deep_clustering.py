"""Deep clustering at the study's scale: k from the eval classes, a head without weight decay whose AdamW
state is reset with it, and a k-means that is linear in k, chunked, deterministic and stays on its device."""

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipbackdoor.config import CsvLabelled, FashionMNISTPairs, ModelConfig, TrainConfig
from clipbackdoor.data import build_pair_dataset
from clipbackdoor.defenses import DefenseError, build_defense
from clipbackdoor.defenses.deep_clustering import DeepClusteringHook, spherical_kmeans
from clipbackdoor.hooks import LoopContext
from clipbackdoor.models import create_model
from clipbackdoor.train.optim import build_optimizer

EVAL_CLASSES = ["cat", "dog", "bird"]  # not 10, the former fixed k


@pytest.fixture
def ctx(fmnist_root: Path, tmp_path: Path) -> LoopContext:
    """A cleaning run's context: tiny-rn, 32 Fashion-MNIST pairs, an eval set of 3 classes."""
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\nmissing.png,0\n")  # only the class names are read
    torch.manual_seed(0)
    bundle = create_model(ModelConfig(name="tiny-rn"))
    source = FashionMNISTPairs(root=str(fmnist_root), max_samples=32)
    pairs = build_pair_dataset(source, bundle.image_size, 0, bundle.tokenizer)
    eval_source = CsvLabelled(path=str(labels), classnames=EVAL_CLASSES)
    return LoopContext(bundle, ModelConfig(name="tiny-rn"), pairs, torch.device("cpu"), 0, 16, eval_source)


def built_hook(ctx: LoopContext, **params: object) -> DeepClusteringHook:
    (hook,) = build_defense({"name": "deep-clustering", **params}).hooks(ctx.bundle)
    hook.setup(ctx)
    return hook


def with_optimizer(ctx: LoopContext, hook: DeepClusteringHook) -> torch.optim.AdamW:
    modules = torch.nn.ModuleDict({"clip": ctx.bundle.model, **hook.modules()})
    ctx.optimizer = build_optimizer(modules, TrainConfig(weight_decay=0.1))
    return ctx.optimizer


def test_k_defaults_to_the_number_of_eval_classes(ctx: LoopContext) -> None:
    assert built_hook(ctx).modules()["cluster_head"].out_features == len(EVAL_CLASSES)
    assert built_hook(ctx, clusters=5).modules()["cluster_head"].out_features == 5
    no_classes = LoopContext(ctx.bundle, ctx.model_config, ctx.train_set, ctx.device, 0, 16, eval_source=None)
    with pytest.raises(DefenseError, match=r"defense\.clusters"):
        built_hook(no_classes)
    with pytest.raises(DefenseError, match=r"defense\.clusters: k=33"):
        built_hook(ctx, clusters=33)  # more clusters than the 32 cleaning images


def test_cluster_head_is_trained_without_weight_decay(ctx: LoopContext) -> None:
    hook = built_hook(ctx)
    optimizer = with_optimizer(ctx, hook)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert [decay_of[id(p)] for p in hook.modules()["cluster_head"].parameters()] == [0.0, 0.0]
    assert decay_of[id(ctx.bundle.model.text_projection)] == 0.1  # the model's weights keep theirs


def test_head_reset_resets_its_optimizer_state(ctx: LoopContext) -> None:
    hook = built_hook(ctx)
    optimizer = with_optimizer(ctx, hook)
    head = hook.modules()["cluster_head"]
    hook.on_epoch_start(1, ctx)
    batch = {"index": torch.arange(8)}
    hook.loss({"image": torch.randn(8, head.in_features)}, batch)["loss"].backward()
    optimizer.step()
    assert all(optimizer.state[p] for p in head.parameters())  # moments after one step
    trained = head.weight.clone()
    hook.on_epoch_start(2, ctx)
    assert not torch.equal(head.weight, trained) and torch.count_nonzero(head.bias) == 0
    assert all(not optimizer.state[p] for p in head.parameters()), "stale AdamW moments kept for a fresh head"
    assert hook.assign is not None and hook.assign.device == ctx.device


def separated_clusters(n_per: int, k: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_per * k) % k
    return torch.eye(dim)[:k][labels] * 5 + 0.3 * torch.randn(n_per * k, dim, generator=g), labels


def test_kmeans_recovers_clusters_deterministically_chunked_on_the_input_device() -> None:
    points, labels = separated_clusters(n_per=40, k=6, dim=16, seed=0)
    assign = spherical_kmeans(points, 6, iters=20, generator=torch.Generator().manual_seed(1))
    for c in range(6):  # each true cluster lands in exactly one k-means cluster, and vice versa
        assert len(set(assign[labels == c].tolist())) == 1
    assert len(set(assign.tolist())) == 6
    assert assign.device == points.device
    again = spherical_kmeans(points, 6, iters=20, generator=torch.Generator().manual_seed(1))
    chunked = spherical_kmeans(points, 6, iters=20, generator=torch.Generator().manual_seed(1), chunk_rows=7)
    assert torch.equal(assign, again) and torch.equal(assign, chunked)


def test_kmeans_cost_grows_linearly_in_k() -> None:
    """k-means++ seeding must not redo a pass over all centres so far for each new one (O(n·d·k²))."""
    points, _ = separated_clusters(n_per=50, k=16, dim=16, seed=0)

    def flops(k: int) -> int:
        with FlopCounterMode(display=False) as counter:
            spherical_kmeans(points, k, iters=1, generator=torch.Generator().manual_seed(0))
        return counter.get_total_flops()

    assert flops(64) <= 4.5 * flops(16)
