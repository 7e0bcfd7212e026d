"""Deep clustering (the study's variant of Caron et al. 2018): at every epoch start the cleaning set's image
embeddings are clustered with spherical k-means, and a linear head on the image embedding is trained to
predict each image's cluster; its cross-entropy (weight 5 in the study) is added to the CleanCLIP objective.
The head is re-initialised every epoch, as cluster ids are arbitrary from one clustering to the next.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader

from clipbackdoor.data.datasets import collate_skipping_bad
from clipbackdoor.defenses.registry import Defense, register
from clipbackdoor.models import ClipBundle
from clipbackdoor.train.hooks import Hook, LoopContext


def spherical_kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster ids of the rows of ``x`` under cosine similarity; k-means++-style seeded initialisation."""
    x = F.normalize(x.float(), dim=1)
    centers = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: far points are likelier next centres
        distance = (1 - (x @ centers.T).max(dim=1).values).clamp_min(0)
        weights = distance if float(distance.sum()) > 0 else torch.ones_like(distance)
        centers = torch.cat([centers, x[torch.multinomial(weights, 1, generator=generator)]])
    assign = (x @ centers.T).argmax(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        empty = sums.norm(dim=1) == 0
        centers = torch.where(empty.unsqueeze(1), centers, F.normalize(sums, dim=1))
        new = (x @ centers.T).argmax(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


class DeepClusteringHook(Hook):
    def __init__(self, k: int, weight: float, iters: int, embed_dim: int):
        self.k, self.weight, self.iters = k, weight, iters
        self.head = torch.nn.Linear(embed_dim, k)
        self.assign: torch.Tensor | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"cluster_head": self.head}

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, ctx: LoopContext) -> dict[str, float]:
        model, device = ctx.bundle.model, ctx.device
        was_training = model.training
        model.eval()
        images = ctx.train_set.without_views()  # views would be computed and thrown away
        loader = DataLoader(images, batch_size=max(256, ctx.batch_size), collate_fn=collate_skipping_bad)
        embeddings = torch.zeros(len(ctx.train_set), self.head.in_features, device=device)
        for batch in loader:
            if "image" in batch:
                images = ctx.bundle.normalize(batch["image"].to(device))
                embeddings[batch["index"].to(device)] = model.encode_image(images, normalize=True).float()
        model.train(was_training)
        generator = torch.Generator().manual_seed(ctx.seed * 1009 + epoch)
        self.assign = spherical_kmeans(embeddings.cpu(), self.k, self.iters, generator).to(device)
        torch.nn.init.normal_(self.head.weight, std=0.01, generator=generator.manual_seed(epoch))
        torch.nn.init.zeros_(self.head.bias)
        sizes = torch.bincount(self.assign, minlength=self.k)
        return {
            "clusters/nonempty": float((sizes > 0).sum()),
            "clusters/largest_share": float(sizes.max()) / len(self.assign),
        }

    def loss(self, features: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert self.assign is not None, "on_epoch_start runs before the first step"
        targets = self.assign[batch["index"].to(self.assign.device)]
        ce = F.cross_entropy(self.head(features["image"].float()), targets)
        return {"loss": self.weight * ce, "cluster_ce": ce}


@register("deep-clustering")
class DeepClustering(Defense):
    name: Literal["deep-clustering"] = "deep-clustering"
    clusters: int = Field(10, ge=2, description="k of the spherical k-means")
    weight: float = Field(5.0, ge=0, description="weight of the cluster-prediction cross-entropy")
    iters: int = Field(20, ge=1, description="k-means iterations per epoch")

    def hooks(self, bundle: ClipBundle) -> list[Hook]:
        return [DeepClusteringHook(self.clusters, self.weight, self.iters, bundle.model.visual.output_dim)]
