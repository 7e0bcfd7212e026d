"""Deep clustering (the study's variant of Caron et al. 2018): at every epoch start the cleaning set's image
embeddings are clustered with spherical k-means, and a linear head on the image embedding is trained to
predict each image's cluster; its cross-entropy (weight 5 in the study) is added to the CleanCLIP objective.

As in the study:

- k defaults to the number of eval classes (1000 on ImageNet, the study's k); ``clusters`` overrides it.
- The head is trained without weight decay (it is marked exempt from the decay group).
- The head is re-initialised every epoch, as cluster ids are arbitrary from one clustering to the next; its
  AdamW moments are reset with it, or the stale moments of the previous clustering would push the new head.

The k-means runs where the embeddings are (the model's device), at the paper's scale (100k × 1024, k = 1000)
in seconds on a GPU: k-means++ keeps each point's distance to its nearest centre and updates it with the
newest centre only (O(n·d) per centre, not a pass over all centres so far), and every Lloyd iteration is one
chunked pass of matrix products, so the similarity blocks stay at ``chunk_rows × k`` whatever n is.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from clipbackdoor.data import build_labelled_dataset
from clipbackdoor.defenses.registry import Defense, DefenseError, register
from clipbackdoor.hooks import (
    Hook,
    LoopContext,
    exempt_from_weight_decay,
    reset_optimizer_state,
    training_embeddings,
)
from clipbackdoor.models import ClipBundle

CHUNK_ROWS = 8192  # rows per similarity block: 8192 × 1000 floats = 32 MB


def spherical_kmeans(
    x: torch.Tensor, k: int, iters: int, generator: torch.Generator, chunk_rows: int = CHUNK_ROWS
) -> torch.Tensor:
    """Cluster ids of the rows of ``x`` under cosine similarity, computed on ``x``'s device.

    k-means++ seeding, then up to ``iters`` Lloyd iterations (stopping when no assignment changes). The
    random draws come from ``generator`` (a CPU generator, the same draws on any device), so a seed gives the
    same clustering on a CPU, and on a GPU up to near-ties (see :func:`assignment_pass`).
    """
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means with k={k} needs at least k points, got {len(x)}")
    x = F.normalize(x.float(), dim=1)
    centres = kmeans_pp_centres(x, k, generator)
    similarity, assign, sums = assignment_pass(x, centres, chunk_rows)
    for _ in range(iters):
        centres = recentred(x, sums, similarity)
        similarity, new_assign, sums = assignment_pass(x, centres, chunk_rows)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return assign


def kmeans_pp_centres(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k centres among the (unit) rows of ``x`` by k-means++: each next one is drawn with probability ∝ its
    cosine distance 1 − cos to the nearest centre so far (half the squared Euclidean distance on the sphere).

    The nearest distance is kept per point and updated with the newest centre only, so each centre costs one
    matrix-vector product, and the draws invert the cumulative distances on the device (no host round trip).
    """
    uniforms = torch.rand(k, generator=generator, dtype=torch.float64).to(x.device)
    distance = torch.full((len(x),), 2.0, device=x.device)  # the largest cosine distance: the first draw is uniform
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    for j in range(k):
        chosen[j] = draw_proportional(distance, uniforms[j])
        centre = x.index_select(0, chosen[j : j + 1])
        distance = torch.minimum(distance, 1 - (x @ centre.T).squeeze(1)).clamp_min_(0)
    return x[chosen]


def draw_proportional(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The index whose share of the cumulative ``weights`` holds ``uniform`` ∈ [0, 1): an index drawn with
    probability ∝ its weight (zero-weight indices are never drawn, unless all are 0: then the last one)."""
    cdf = weights.double().cumsum(0)
    return torch.searchsorted(cdf, uniform * cdf[-1], right=True).clamp_max(len(weights) - 1)


def assignment_pass(
    x: torch.Tensor, centres: torch.Tensor, chunk_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's cosine to its nearest centre and that centre's index, with the per-cluster sums of the rows
    (the next centres' directions), in blocks of ``chunk_rows`` rows: one pass over ``x`` per Lloyd iteration.

    The sums repeat exactly on a CPU; on a GPU ``index_add_`` adds in no fixed order (as does the rest of GPU
    training), so a near-tie may then fall either way.
    """
    sums = torch.zeros_like(centres)
    similarities, assigns = [], []
    for block in x.split(chunk_rows):
        nearest = (block @ centres.T).max(dim=1)
        sums.index_add_(0, nearest.indices, block)
        similarities.append(nearest.values)
        assigns.append(nearest.indices)
    return torch.cat(similarities), torch.cat(assigns), sums


def recentred(x: torch.Tensor, sums: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Each cluster's mean direction; a cluster left without members is re-seeded with one of the points
    farthest from their centres, so that all k clusters stay in use."""
    centres = F.normalize(sums, dim=1)
    empty = (sums.norm(dim=1) == 0).nonzero().squeeze(1)
    if len(empty):
        centres[empty] = x[similarity.topk(len(empty), largest=False).indices]
    return centres


def eval_class_count(ctx: LoopContext) -> int:
    """The number of classes of the run's zero-shot eval set, the default k."""
    if ctx.eval_source is None:
        raise DefenseError("defense.clusters: this run's eval has no classes to take k from; set it")
    return len(build_labelled_dataset(ctx.eval_source, ctx.bundle.image_size).classnames)


class DeepClusteringHook(Hook):
    def __init__(self, clusters: int | None, weight: float, iters: int):
        self.clusters, self.weight, self.iters = clusters, weight, iters
        self.head: torch.nn.Linear | None = None
        self.assign: torch.Tensor | None = None

    def setup(self, ctx: LoopContext) -> None:
        """Creates the head, once k is known (it may come from the eval set)."""
        k = self.clusters or eval_class_count(ctx)
        if k > len(ctx.train_set):
            raise DefenseError(f"defense.clusters: k={k} clusters exceed the {len(ctx.train_set)} cleaning images")
        self.head = exempt_from_weight_decay(torch.nn.Linear(ctx.bundle.model.visual.output_dim, k))

    def modules(self) -> dict[str, torch.nn.Module]:
        assert self.head is not None, "setup creates the head"
        return {"cluster_head": self.head}

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, ctx: LoopContext) -> dict[str, float]:
        assert self.head is not None and ctx.optimizer is not None, "setup and the optimizer come first"
        generator = torch.Generator().manual_seed(ctx.seed * 1009 + epoch)
        self.assign = spherical_kmeans(training_embeddings(ctx)[0], self.head.out_features, self.iters, generator)
        self.head.weight.copy_(0.01 * torch.randn(self.head.weight.shape, generator=generator))
        self.head.bias.zero_()
        reset_optimizer_state(ctx.optimizer, self.head)
        sizes = torch.bincount(self.assign, minlength=self.head.out_features)
        return {
            "clusters/k": float(self.head.out_features),
            "clusters/nonempty": float((sizes > 0).sum()),
            "clusters/largest_share": float(sizes.max()) / len(self.assign),
        }

    def loss(self, features: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert self.head is not None and self.assign is not None, "on_epoch_start runs before the first step"
        targets = self.assign[batch["index"].to(self.assign.device)]
        ce = F.cross_entropy(self.head(features["image"].float()), targets)
        return {"loss": self.weight * ce, "cluster_ce": ce}


@register("deep-clustering")
class DeepClustering(Defense):
    name: Literal["deep-clustering"] = "deep-clustering"
    clusters: int | None = Field(
        None, ge=2, description="k of the spherical k-means; default: the number of eval classes (the study's 1000)"
    )
    weight: float = Field(5.0, ge=0, description="weight of the cluster-prediction cross-entropy")
    iters: int = Field(20, ge=1, description="k-means iterations per epoch")

    def hooks(self, bundle: ClipBundle) -> list[Hook]:
        return [DeepClusteringHook(self.clusters, self.weight, self.iters)]
