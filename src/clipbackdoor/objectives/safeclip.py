"""SafeCLIP (Yang, Gao & Mirzasoleiman, ICML 2024): pre-train on the pairs that look safe, and only in-modally
on the rest.

Phases, by epoch (from 1):

1. ``inmodal_warmup`` epochs of in-modal contrastive learning only (each image against its AutoAugment
   view, each caption against its EDA view: CleanCLIP's SSL loss), so that poisoned images and captions are
   not pulled together before they can be told apart;
2. ``multimodal_warmup`` epochs of the CLIP loss on all pairs;
3. then, at the start of every epoch, every training pair's image–caption cosine similarity is computed with
   the current model and a 2-component Gaussian mixture (scikit-learn) is fitted to them. The first time,
   the safe set is the pairs whose posterior of the higher-mean component is at least ``clean_probability``;
   afterwards it is the top ``ratio`` of pairs by that posterior, ``ratio`` growing by ``grow`` per epoch up
   to ``cap``. The CLIP loss is applied to safe pairs (among the batch's safe pairs only) and the in-modal
   loss to risky ones.

Defaults are the SafeCLIP code's (``--inmodal_warmup 5``, ``--multimodal_warmup 1``, the 0.9 posterior of
the first split, ``--update_filter_ratio 0.01``, ``--cap_filter_ratio 0.85``), read from a public copy of its
``parser.py``/``main.py`` (DomJamb/SafeCLIP; the authors' repository is not in our library). Where we
depart: the reference trains the risky and the safe set in two passes per epoch with their own learning-rate
schedules (and its multimodal warm-up at a low rate); here each batch mixes both, with the run's one
schedule (exact under DDP and accumulation: per-rank sums over the global batch size). Every rank scores
all pairs at an epoch's start.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipbackdoor.augment import ViewPolicy
from clipbackdoor.config import ConfigError
from clipbackdoor.hooks import Hook, LoopContext, training_embeddings
from clipbackdoor.objectives.distributed import gather_with_grad, local_targets
from clipbackdoor.objectives.registry import Features, Objective, register
from clipbackdoor.objectives.roclip import gather_detached


def clean_posterior(similarity: np.ndarray, seed: int = 0) -> np.ndarray:
    """Posterior of the higher-mean component of a 2-component Gaussian mixture fitted to ``similarity``."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, random_state=seed).fit(similarity.reshape(-1, 1))
    clean = int(np.argmax(gmm.means_.ravel()))
    return gmm.predict_proba(similarity.reshape(-1, 1))[:, clean]


def safe_split(posterior: np.ndarray, ratio: float | None, clean_probability: float) -> tuple[np.ndarray, float]:
    """(safe mask, its share): the first split by ``clean_probability``, later ones the top ``ratio`` by posterior
    (ties by index, so the split is deterministic)."""
    if ratio is None:
        safe = posterior >= clean_probability
        return safe, float(safe.mean())
    order = np.lexsort((np.arange(len(posterior)), -posterior))
    safe = np.zeros(len(posterior), dtype=bool)
    safe[order[: int(len(posterior) * ratio)]] = True
    return safe, ratio


def masked_ce(
    rows: torch.Tensor, columns: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, rank: int, world_size: int
) -> torch.Tensor:
    """Σ over the kept local rows of CE(s · row · kept columnsᵀ) against the gathered batch, divided by the
    global batch size (× world size, which DDP's averaging undoes): every pair weighs the same, whichever
    loss it gets, and the sum is exact under DDP and accumulation."""
    all_keep = gather_detached(keep, world_size)
    gathered = gather_with_grad(columns, world_size)  # on every rank, kept rows or not: a collective
    if not keep.any():
        return (rows.sum() + gathered.sum()) * 0.0  # nothing kept here: a zero that keeps the graph for DDP
    blocked = torch.where(all_keep, 0.0, float("-inf")).to(rows.dtype)
    logits = scale * rows @ gathered.T + blocked
    local = keep.nonzero().squeeze(1)
    targets = local_targets(len(rows), rank, rows.device)[local]
    return F.cross_entropy(logits[local], targets, reduction="sum") * world_size / len(all_keep)


@register("safeclip")
class SafeCLIP(Objective):
    view_policy = ViewPolicy("simclr", fixed_captions=True)  # utils/augment_image.py; src/data.py:56-57

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        inmodal_warmup: int = 5,
        multimodal_warmup: int = 1,
        clean_probability: float = 0.9,
        grow: float = 0.01,
        cap: float = 0.85,
    ):
        super().__init__(rank, world_size)
        if inmodal_warmup < 0 or multimodal_warmup < 0 or not 0 < cap <= 1 or grow < 0:
            raise ValueError("safeclip: warm-ups >= 0, 0 < cap <= 1, grow >= 0")
        self.inmodal_warmup, self.multimodal_warmup = inmodal_warmup, multimodal_warmup
        self.clean_probability, self.grow, self.cap = clean_probability, grow, cap
        self.epoch = 1
        self.safe: torch.Tensor | None = None  # bool per training pair (dataset index), from phase 3 on
        self.ratio: float | None = None  # the safe share the next split takes

    @property
    def views(self) -> frozenset[str]:
        return frozenset({"image_aug", "text_aug"})

    @property
    def phase(self) -> str:
        if self.epoch <= self.inmodal_warmup:
            return "inmodal"
        if self.epoch <= self.inmodal_warmup + self.multimodal_warmup:
            return "multimodal"
        return "split"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def hooks(self) -> list[Hook]:
        return [SafeSplitHook(self)]

    def split(self, similarity: np.ndarray, seed: int) -> None:
        """This epoch's safe set from every pair's image–caption similarity; the next share grows."""
        safe, share = safe_split(clean_posterior(similarity, seed), self.ratio, self.clean_probability)
        self.safe = torch.from_numpy(safe)
        self.ratio = min(share + self.grow, self.cap)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        s, image, text = features["logit_scale"], features["image"], features["text"]
        if self.phase == "split":
            assert self.safe is not None, "safeclip: no safe set yet (its hook splits at the epoch's start)"
            if self.safe.device != image.device:
                self.safe = self.safe.to(image.device)  # once per split, not on every micro-batch pass
            safe = self.safe[features["index"]]
        else:
            safe = torch.full((len(image),), self.phase == "multimodal", dtype=torch.bool, device=image.device)
        risky, r, w = ~safe, self.rank, self.world_size
        clip = 0.5 * (masked_ce(image, text, safe, s, r, w) + masked_ce(text, image, safe, s, r, w))
        ssl = 0.5 * (
            masked_ce(image, features["image_aug"], risky, s, r, w)
            + masked_ce(text, features["text_aug"], risky, s, r, w)
        )
        return {"loss": clip + ssl, "clip": clip, "ssl": ssl, "safe": safe.float().mean()}

    def get_extra_state(self) -> dict[str, Any]:
        return {"safe": self.safe, "ratio": self.ratio}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.safe, self.ratio = state["safe"], state["ratio"]


class SafeSplitHook(Hook):
    """At the start of every split-phase epoch: score every training pair and split safe from risky."""

    def __init__(self, term: SafeCLIP):
        self.term = term

    def setup(self, ctx: LoopContext) -> None:
        if not hasattr(ctx.train_set, "without_views"):
            raise ConfigError(
                "objective.safeclip scores every training pair by its dataset index: it needs indexed data "
                "(a CSV, or shards with data.train.access: index), not a stream"
            )

    def on_epoch_start(self, epoch: int, ctx: LoopContext) -> dict[str, float]:
        self.term.set_epoch(epoch)
        if self.term.phase != "split":
            return {}
        similarity = pair_similarities(ctx)
        self.term.split(similarity, ctx.seed)
        return {"safeclip/safe_share": float(self.term.safe.float().mean())}


def pair_similarities(ctx: LoopContext) -> np.ndarray:
    """Every training pair's image–caption cosine similarity under the current model, by dataset index
    (unreadable rows get -1: they are never safe)."""
    images, texts = training_embeddings(ctx, captions=True)
    assert texts is not None
    similarity = (images * texts).sum(dim=1)
    return torch.where(images.abs().sum(dim=1) > 0, similarity, -1.0).cpu().numpy().astype(np.float64)
