"""The hook contract: the extension points of the training loop, which cleaning defenses and objectives
implement (it lives below both, and below ``train``, so that neither imports the loop).

A hook can change the model once before training (shrink & perturb), do work at the start of every epoch
(deep clustering's k-means), add trainable modules (a clustering head) and add loss terms computed from
the batch's features (a clustering loss, PAR's distance to the frozen poisoned model). The loop calls every
hook at these points and nothing else, so a defense never needs its own copy of the loop.

Order: ``setup`` first, so a hook can size its modules by the run (deep clustering's head has one output per
eval class); then ``modules`` are collected and the optimizer is built over the model and them, and handed
to the hooks as ``LoopContext.optimizer`` (a hook that re-initialises its module resets that module's state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from clipbackdoor.config import LabelledSource, ModelConfig
from clipbackdoor.data.datasets import PairDataset, collate_skipping_bad
from clipbackdoor.models import ClipBundle

_EXEMPT_MARK = "exempt_from_weight_decay"

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def exempt_from_weight_decay(module: ModuleT) -> ModuleT:
    """Mark a module a hook adds (deep clustering's head) so that the optimizer puts all its parameters in the
    no-decay group; returns it."""
    setattr(module, _EXEMPT_MARK, True)
    return module


def is_exempt_from_weight_decay(module: torch.nn.Module) -> bool:
    return getattr(module, _EXEMPT_MARK, False)


def reset_optimizer_state(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> None:
    """Forget the optimizer state (AdamW: step, exp_avg, exp_avg_sq) of ``module``'s parameters, for a hook
    that re-initialises its module: the next step starts their moments afresh, not pushed by stale ones."""
    for param in module.parameters():
        optimizer.state.pop(param, None)


@dataclass
class LoopContext:
    """What hooks may look at: the model, the training data, the eval set's config, where things run and,
    once built (after ``setup``), the optimizer."""

    bundle: ClipBundle
    model_config: ModelConfig
    train_set: PairDataset
    device: torch.device
    seed: int
    batch_size: int
    eval_source: LabelledSource | None = None  # the zero-shot eval set; None: an eval without classes
    attack: str | None = None  # the poison manifest (eval.attack), for hooks that report how poisons fared
    optimizer: torch.optim.Optimizer | None = None


class Hook:
    def modules(self) -> dict[str, torch.nn.Module]:
        """Extra trainable modules, by name (asked after ``setup``): optimised with the model and saved in its
        checkpoints."""
        return {}

    def setup(self, ctx: LoopContext) -> None:
        """At every start, fresh or resumed, before anything else (e.g. load a frozen reference model, create
        the hook's modules); ``ctx.optimizer`` is not built yet."""

    def before_training(self, ctx: LoopContext) -> None:
        """Once, after the epoch-0 evaluation of a fresh (not resumed) run."""

    def on_epoch_start(self, epoch: int, ctx: LoopContext) -> dict[str, float]:
        """Before each epoch's first step; returns values to log with the epoch."""
        return {}

    def on_record(self, record: dict[str, Any]) -> None:
        """Every record as it is written to metrics.jsonl (rank 0): where external loggers take it."""

    def on_checkpoint(self, epoch: int) -> None:
        """Right after epoch ``epoch``'s checkpoint is saved (rank 0). Its records are final only now: a crash
        before it makes the resumed run redo the epoch and write them again, so a logger that cannot take a
        record back (W&B) holds them until here."""

    def loss(self, features: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Extra weighted terms for this batch: ``{"loss": weighted total, other parts to log}``."""
        return {}


class _AtEpoch(Dataset):
    """A pair dataset's items with the views epoch ``epoch`` draws."""

    def __init__(self, pairs: PairDataset, epoch: int):
        self.pairs, self.epoch = pairs, epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Any:
        return self.pairs[(self.epoch, index)]


@torch.no_grad()
def training_embeddings(
    ctx: LoopContext, captions: bool = False, views: tuple[str, str] | None = None, epoch: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The normalised image (and, with ``captions``, caption) embeddings of every training pair under the
    current model in eval mode, on ``ctx.device``, by dataset index; rows of unreadable images stay 0. Of the
    originals, or of the (image view, caption view) ``views`` as epoch ``epoch`` draws them. For hooks that
    look at the whole training set at an epoch's start (deep clustering's k-means, SafeCLIP's split)."""
    model, device = ctx.bundle.model, ctx.device
    was_training = model.training
    model.eval()
    image_key, text_key = views or ("image", "text")
    # only what is encoded: other views would be computed and thrown away
    pairs = _AtEpoch(ctx.train_set.with_views(frozenset(views)) if views else ctx.train_set.without_views(), epoch)
    loader = DataLoader(pairs, batch_size=max(256, ctx.batch_size), collate_fn=collate_skipping_bad)
    width = model.visual.output_dim
    images = torch.zeros(len(pairs), width, device=device)
    texts = torch.zeros(len(pairs), width, device=device) if captions else None
    for batch in loader:
        if "image" in batch:
            index = batch["index"].to(device)
            pixels = ctx.bundle.normalize(batch[image_key].to(device))
            images[index] = model.encode_image(pixels, normalize=True).float()
            if texts is not None:
                texts[index] = model.encode_text(batch[text_key].to(device), normalize=True).float()
    model.train(was_training)
    return images, texts
