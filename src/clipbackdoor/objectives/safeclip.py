"""SafeCLIP (Yang, Gao & Mirzasoleiman, ICML 2024): pre-train on the pairs that look safe, and only in-modally
on the rest.

Follows BigML-CS-UCLA/SafeCLIP: ``SafeCLIP/src/main.py`` (phases, the split, the schedulers), ``src/train.py``
(the losses and the banks), ``src/scheduler.py`` (warm-up + cosine), ``src/parser.py`` (defaults),
``src/memory_bank.py`` with lightly 1.2.39's ``MemoryBankModule`` (the nearest-neighbour banks),
``utils/augment_image.py`` and ``src/data.py`` (views).

**Views** (the objective's view policy, ``--cross_aug``): two SimCLR-style image views redrawn every load
(``image_aug``, ``image_aug2``) and two EDA captions drawn once (``text_aug``, ``text_aug2``); the originals
are not encoded.

**Losses.** In-modal, per modality: view 2 against the nearest neighbour of view 1 in a bank of earlier view-1
embeddings (the bank as it was before this step, detached: view 1 gets no gradient), cross-entropy over the
batch in one direction, the two modalities averaged; with ``memory_bank_size: 0`` view 2 against view 1. The
banks (``--memory_bank``, on in the authors' command line; 256 rows each) are first-in-first-out, filled with
every rank's view-1 embeddings after each in-modal step (lightly's rule: a batch that overflows the end fills
it and the rest is dropped). CLIP across views: ½[CE(s·img₁·txt₂ᵀ) + CE(s·txt₁·img₂ᵀ)], each one direction
(train.py). Every loss takes the local rows against the gathered batch, exact under DDP and accumulation.

**Phases**, by epoch (from 1), each a list of passes the loop runs (:meth:`passes`):

1. ``inmodal_warmup`` epochs: one pass over every pair, in-modal, on the schedule ``warmup``: from ``in_lr``,
   ``train.warmup_steps`` of linear warm-up, cosine over the steps of ``inmodal_warmup + multimodal_warmup``
   epochs (main.py's ``pretrain_scheduler``);
2. ``multimodal_warmup`` epochs: one pass over every pair, CLIP, at the constant ``filter_lr`` (train.py's
   ``lr_adjust``), so that poisoned pairs are not yet learnt when the split is made;
3. then every epoch: at its start every pair's cosine similarity between view 1's image and caption, in eval
   mode, is fitted by a 2-component Gaussian mixture; the first time the safe set is the pairs whose posterior
   of the higher-mean component is at least ``clean_probability``, afterwards the top ``ratio`` by posterior,
   ``ratio`` growing by ``grow`` per epoch up to ``cap``. Then two passes: the risky set in-modally on the
   schedule ``inmodal`` (from ``in_lr``), the safe set under CLIP on ``crossmodal`` (from ``cross_lr``), each
   a warm-up + cosine over its own pass's steps summed over the split epochs (fixed at the first split).

At every split, when the pairs are a poisoned set with a manifest (``eval.attack``), the share of its poisons and
of its clean pairs in the safe set go into the epoch's record: whether the split told poisons apart.

Defaults are the code's (parser.py): ``--inmodal_warmup 5``, ``--multimodal_warmup 1``, ``--in_lr`` and
``--cross_lr 5e-4``, ``--filter_lr 5e-6``, ``--memory_bank_size 256``, ``--update_filter_ratio 0.01``,
``--cap_filter_ratio 0.85``, the first split's posterior 0.9 (main.py:202). ``train.lr`` is not used. Where we
depart (docs/departures.md): each schedule counts its own steps from 0 (the reference numbers them from epoch
1, so its split schedules start part-way and run past their end), each split schedule spans its own pass's
steps with the cap applied (the reference sizes both by the safe set's, without the cap), every schedule warms
up over ``train.warmup_steps``, the banks start as random unit vectors (lightly 1.2.39 leaves them
unnormalised) and are checkpointed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipbackdoor.attacks.manifest import load_manifest
from clipbackdoor.augment import ViewPolicy
from clipbackdoor.config import ConfigError
from clipbackdoor.hooks import Hook, LoopContext, training_embeddings
from clipbackdoor.objectives.distributed import gather_with_grad, local_targets
from clipbackdoor.objectives.registry import Features, Objective, Pass, RunShape, Schedule, register
from clipbackdoor.objectives.roclip import gather_detached

VIEWS = frozenset({"image_aug", "image_aug2", "text_aug", "text_aug2"})
BANK_SEED = 0  # the banks' random first rows


def clean_posterior(similarity: np.ndarray, seed: int = 0) -> np.ndarray:
    """Posterior of the higher-mean component of a 2-component Gaussian mixture fitted to ``similarity``."""
    from sklearn.mixture import GaussianMixture  # the detect extra's scikit-learn: only SafeCLIP needs it here

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


def one_way_ce(rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, rank: int) -> torch.Tensor:
    """CE(s · local rows · columnsᵀ) against the rows' own positions in the gathered batch."""
    return F.cross_entropy(scale * rows @ columns.T, local_targets(len(rows), rank, rows.device))


class NearestNeighbourBank:
    """A first-in-first-out bank of embeddings and its nearest-neighbour lookup (lightly's ``NNMemoryBankModule``
    as SafeCLIP uses it): ``nearest`` reads the bank as it is, ``add`` writes a batch at the cursor."""

    def __init__(self, size: int):
        self.size, self.rows, self.cursor = size, None, 0

    def nearest(self, query: torch.Tensor) -> torch.Tensor:
        """Each query row's nearest bank row (cosine), detached."""
        bank = self._bank(query)
        return bank[(F.normalize(query.detach().float(), dim=-1) @ bank.T).argmax(dim=1)].to(query.dtype)

    def add(self, batch: torch.Tensor) -> None:
        bank, batch = self._bank(batch), batch.detach().float()
        if self.cursor + len(batch) >= self.size:  # lightly: fill to the end, drop the rest, start over
            bank[self.cursor :] = batch[: self.size - self.cursor]
            self.cursor = 0
        else:
            bank[self.cursor : self.cursor + len(batch)] = batch
            self.cursor += len(batch)

    def _bank(self, like: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            g = torch.Generator().manual_seed(BANK_SEED)
            self.rows = F.normalize(torch.randn(self.size, like.shape[1], generator=g), dim=-1)
        if self.rows.device != like.device:
            self.rows = self.rows.to(like.device)  # once after a resume, not on every pass
        return self.rows


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
        in_lr: float = 5e-4,
        cross_lr: float = 5e-4,
        filter_lr: float = 5e-6,
        memory_bank_size: int = 256,
    ):
        super().__init__(rank, world_size)
        if inmodal_warmup < 0 or multimodal_warmup < 0 or not 0 < cap <= 1 or grow < 0 or memory_bank_size < 0:
            raise ValueError("safeclip: warm-ups >= 0, 0 < cap <= 1, grow >= 0, memory_bank_size >= 0")
        self.inmodal_warmup, self.multimodal_warmup = inmodal_warmup, multimodal_warmup
        self.clean_probability, self.grow, self.cap = clean_probability, grow, cap
        self.in_lr, self.cross_lr, self.filter_lr = in_lr, cross_lr, filter_lr
        self.banks = {m: NearestNeighbourBank(memory_bank_size) for m in ("image", "text")} if memory_bank_size else {}
        self.epoch, self.mode = 1, "inmodal"
        self.safe: torch.Tensor | None = None  # bool per training pair (dataset index), from the first split on
        self.ratio: float | None = None  # the safe share the next split takes
        self.first_share: float | None = None  # the first split's: it fixes the split schedules' lengths

    @property
    def views(self) -> frozenset[str]:
        return VIEWS

    @property
    def reads_originals(self) -> bool:
        return False

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
        self.first_share = share if self.first_share is None else self.first_share
        self.ratio = min(share + self.grow, self.cap)

    def split_steps(self, shape: RunShape) -> tuple[int, int]:
        """(risky, safe) optimizer steps summed over the split epochs: the ratios the first split fixes, grown
        to the cap, each epoch's sets cut into whole global batches."""
        assert self.first_share is not None, "safeclip: the split schedules are sized at the first split"
        epochs = max(0, shape.epochs - self.inmodal_warmup - self.multimodal_warmup)
        safe_counts, share = [], self.first_share
        for e in range(epochs):
            safe_counts.append(round(shape.pairs * share) if e == 0 else int(shape.pairs * share))
            share = min(share + self.grow, self.cap)
        risky = sum(shape.steps_for(shape.pairs - n) for n in safe_counts)
        return risky, sum(shape.steps_for(n) for n in safe_counts)

    def passes(self, epoch: int, shape: RunShape) -> list[Pass]:
        if self.phase == "inmodal":
            total = shape.steps_for(shape.pairs) * (self.inmodal_warmup + self.multimodal_warmup)
            return [Pass("inmodal-warmup", None, Schedule("warmup", self.in_lr, total), "inmodal")]
        if self.phase == "multimodal":
            return [Pass("clip-warmup", None, Schedule("filter", constant=self.filter_lr), "clip")]
        assert self.safe is not None, "safeclip: no safe set yet (its hook splits at the epoch's start)"
        risky_steps, safe_steps = self.split_steps(shape)
        safe = self.safe.cpu().numpy()
        return [
            Pass("risky", np.flatnonzero(~safe), Schedule("inmodal", self.in_lr, risky_steps), "inmodal"),
            Pass("safe", np.flatnonzero(safe), Schedule("crossmodal", self.cross_lr, safe_steps), "clip"),
        ]

    def begin_pass(self, p: Pass) -> None:
        self.mode = p.mode

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        s, r, w = features["logit_scale"], self.rank, self.world_size
        if self.mode == "clip":
            image_1, image_2 = features["image_aug"], features["image_aug2"]
            text_1, text_2 = features["text_aug"], features["text_aug2"]
            clip = 0.5 * (
                one_way_ce(image_1, gather_with_grad(text_2, w), s, r)
                + one_way_ce(text_1, gather_with_grad(image_2, w), s, r)
            )
            return {"loss": clip, "clip": clip.detach()}
        inmodal = 0.5 * (self._inmodal("image", features, s) + self._inmodal("text", features, s))
        return {"loss": inmodal, "inmodal": inmodal.detach()}

    def _inmodal(self, modality: str, features: Features, scale: torch.Tensor) -> torch.Tensor:
        """View 2 against view 1's nearest neighbour in the modality's bank (or view 1 itself, without banks)."""
        view_1, view_2, w = features[f"{modality}_aug"], features[f"{modality}_aug2"], self.world_size
        bank = self.banks.get(modality)
        columns = bank.nearest(gather_detached(view_1, w)) if bank is not None else gather_with_grad(view_1, w)
        return one_way_ce(view_2, columns, scale, self.rank)

    def after_step(self, features: Features) -> None:
        """After an in-modal step, every rank's view-1 embeddings go into the banks, oldest out first."""
        if self.mode != "inmodal":
            return
        for modality, bank in self.banks.items():
            bank.add(F.normalize(gather_detached(features[f"{modality}_aug"], self.world_size).float(), dim=-1))

    def get_extra_state(self) -> dict[str, Any]:
        banks = {m: (b.rows, b.cursor) for m, b in self.banks.items()}
        return {"safe": self.safe, "ratio": self.ratio, "first_share": self.first_share, "banks": banks}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.safe, self.ratio, self.first_share = state["safe"], state["ratio"], state["first_share"]
        for modality, (rows, cursor) in state["banks"].items():
            self.banks[modality].rows, self.banks[modality].cursor = rows, cursor


class SafeSplitHook(Hook):
    """At the start of every split-phase epoch: score every training pair and split safe from risky; report how
    many of the manifest's poisons, and of its clean pairs, the safe set kept."""

    def __init__(self, term: SafeCLIP):
        self.term = term
        self.poisoned: np.ndarray | None = None  # bool per dataset index, when the pairs have a manifest

    def setup(self, ctx: LoopContext) -> None:
        if not hasattr(ctx.train_set, "with_views"):
            raise ConfigError(
                "objective.safeclip scores every training pair by its dataset index: it needs indexed data "
                "(a CSV, or shards with data.train.access: index), not a stream"
            )
        self.poisoned = poisoned_pairs(ctx)

    def on_epoch_start(self, epoch: int, ctx: LoopContext) -> dict[str, float]:
        self.term.set_epoch(epoch)
        if self.term.phase != "split":
            return {}
        images, texts = training_embeddings(ctx, captions=True, views=("image_aug", "text_aug"), epoch=epoch)
        assert texts is not None
        similarity = torch.where(images.abs().sum(dim=1) > 0, (images * texts).sum(dim=1), -1.0)
        self.term.split(similarity.cpu().numpy().astype(np.float64), ctx.seed)
        safe = self.term.safe.numpy()
        logs = {"safeclip/safe_share": float(safe.mean())}
        if self.poisoned is not None:
            logs["safeclip/poison_safe_share"] = float(safe[self.poisoned].mean()) if self.poisoned.any() else 0.0
            logs["safeclip/clean_safe_share"] = float(safe[~self.poisoned].mean())
        return logs


def poisoned_pairs(ctx: LoopContext) -> np.ndarray | None:
    """Which training pairs (by dataset index) the manifest of ``eval.attack`` lists as poisoned, when the
    training data is the set it describes (its train.csv, or the shards ``poison`` wrote, whose keys are the
    CSV's row numbers); else None (nothing to report)."""
    rows = getattr(ctx.train_set, "rows", None)
    ordinals = getattr(rows, "ordinals", None)
    if ctx.attack is None or ordinals is None:
        return None
    manifest, _ = load_manifest(ctx.attack)
    folder = Path(ctx.attack) if Path(ctx.attack).is_dir() else Path(ctx.attack).parent
    described = {str((folder / name).resolve()) for k, name in manifest.files.items() if k in ("train", "shards")}
    described.add(str((folder / "train.csv").resolve()))
    if str(Path(rows.source).resolve()) not in described:
        return None
    return np.isin(np.asarray(ordinals), np.asarray(manifest.poison_rows, dtype=np.int64))
