"""One optimizer step's forward and backward passes, with exact gradient accumulation.

A contrastive loss over a global batch needs every pair's features at once. When one forward pass holds
only a micro-batch, we do what large-batch CLIP trainers do (open_clip's ``accum_freq``, GradCache): encode
all k micro-batches without grad and cache their features; then, for each micro-batch in turn, encode it
again with grad, put its features in place of its cached ones and back-propagate the loss of the whole
batch. Summed over the k passes these are the gradients of the whole batch in one pass, negatives from the
whole global batch (the losses gather the other ranks' features). The price is one extra forward pass.

Loss terms added by hooks (defenses) are per-sample means over a micro-batch: each micro-batch's term is
weighted 1/k, which sums to the whole batch's mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from clipbackdoor.augment import IMAGE_VIEWS, TEXT_VIEWS
from clipbackdoor.data.transforms import Normalize
from clipbackdoor.hooks import Hook
from clipbackdoor.objectives import WeightedObjective

IMAGE_KEYS = ("image", *IMAGE_VIEWS)
TEXT_KEYS = ("text", *TEXT_VIEWS)
# Feature entries that are per pair (concatenated over micro-batches); the rest (temperature, bias) are scalars.
PAIR_FEATURES = (*IMAGE_KEYS, *TEXT_KEYS, "index")


def encode(
    net: torch.nn.Module,
    normalize: Normalize,
    batch: dict[str, Any],
    device: torch.device,
    views: frozenset[str],
    memory_format: torch.memory_format = torch.contiguous_format,
    originals: bool = True,
) -> dict[str, torch.Tensor]:
    """Features of a batch and of its augmented views, in one forward pass of ``net``.

    Originals and views are concatenated along the batch, as CleanCLIP does (batch-norm statistics then
    cover both), and split afterwards. Returns L2-normalised ``image``/``text`` and each view in ``views``
    (``image_aug``, ``image_aug2``, ``text_aug``, ``text_aug2``), the temperature ``logit_scale`` = exp(learned
    value) and, if the model has one, ``logit_bias``. Without ``originals`` (no loss term reads them: RoCLIP,
    SafeCLIP) only the views are encoded.
    """
    image_keys = [k for k in IMAGE_KEYS if k in views or (k == "image" and originals)]
    text_keys = [k for k in TEXT_KEYS if k in views or (k == "text" and originals)]
    n = len(batch[image_keys[0]])
    images = torch.cat([batch[k] for k in image_keys]) if len(image_keys) > 1 else batch[image_keys[0]]
    texts = torch.cat([batch[k] for k in text_keys]) if len(text_keys) > 1 else batch[text_keys[0]]
    pixels = normalize(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
    out = net(pixels, texts.to(device, non_blocking=True))
    features = {"logit_scale": out[2]}
    features.update({k: out[0][i * n : (i + 1) * n] for i, k in enumerate(image_keys)})
    features.update({k: out[1][i * n : (i + 1) * n] for i, k in enumerate(text_keys)})
    if len(out) > 3:
        features["logit_bias"] = out[3]
    if "index" in batch:  # which pairs these are (SafeCLIP's safe set is kept by dataset index)
        features["index"] = batch["index"].to(device, non_blocking=True)
    return features


@contextmanager
def buffers_kept(module: torch.nn.Module) -> Iterator[None]:
    """Undo buffer updates (BatchNorm running statistics) made inside: the caching pass must not count twice."""
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, old in zip(module.buffers(), saved, strict=True):
                buffer.copy_(old)


def with_replaced(cached: list[dict[str, torch.Tensor]], j: int, live: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The whole batch's features, micro-batch ``j``'s taken from ``live`` (with grad), the others cached.

    The loss depends on the temperature (and a logit bias) through the whole batch, not per micro-batch: their
    gradient must be counted once, so they carry it only in the last pass. (open_clip's ``accum_freq``
    counts it k times.)"""
    last = j == len(cached) - 1
    whole = {k: v if last else v.detach() for k, v in live.items() if k not in PAIR_FEATURES}
    for key in PAIR_FEATURES:
        if key in live:
            whole[key] = torch.cat([live[key] if i == j else c[key] for i, c in enumerate(cached)])
    return whole


@dataclass(frozen=True)
class StepSettings:
    """What every optimizer step of a run is run with (everything but its micro-batches)."""

    net: torch.nn.Module  # what runs the forward pass: the model, wrapped by DDP and/or torch.compile
    ddp: torch.nn.Module  # the DDP wrapper (or the model): no_sync lives on it, under torch.compile's wrapper
    normalize: Normalize
    device: torch.device
    objective: WeightedObjective
    hooks: Sequence[Hook] = ()  # their extra loss terms are added to the objective's
    memory_format: torch.memory_format = torch.contiguous_format
    bf16: bool = False  # autocast the forward passes to bfloat16


def forward_backward(
    settings: StepSettings, micro_batches: list[dict[str, Any]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gradients of one optimizer step over ``micro_batches`` (this rank's share of the global batch).

    Gradients are all-reduced (``settings.ddp``) only in the last backward pass. Returns the step's loss and
    its logged parts (detached).
    """
    k, objective, ddp = len(micro_batches), settings.objective, settings.ddp
    autocast = torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    cached: list[dict[str, torch.Tensor]] = []
    if k > 1:
        with torch.no_grad(), autocast, buffers_kept(settings.net):
            cached = [_encode(settings, mb) for mb in micro_batches]
    hook_parts: dict[str, torch.Tensor] = {}
    for j, batch in enumerate(micro_batches):
        sync = ddp.no_sync() if j < k - 1 and hasattr(ddp, "no_sync") else nullcontext()
        with sync, autocast:
            live = _encode(settings, batch)
            whole = with_replaced(cached, j, live) if k > 1 else live
            loss, parts = objective(whole)
            whole_batch_loss = loss.detach()  # the same in every pass
            for hook in settings.hooks:
                extra = hook.loss(live, batch)
                if extra:
                    loss = loss + extra["loss"] / k
                    for name, value in extra.items():
                        key = f"defense/{name}"
                        hook_parts[key] = hook_parts.get(key, 0) + value.detach().float() / k
            loss.backward()
    objective.after_step({key: value.detach() for key, value in whole.items()})
    return whole_batch_loss + hook_parts.get("defense/loss", 0), {**parts, **hook_parts}


def _encode(settings: StepSettings, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """:func:`encode` under the run's settings: the views the objective reads, originals only if it reads them."""
    objective = settings.objective
    return encode(
        settings.net, settings.normalize, batch, settings.device, objective.views, settings.memory_format,
        objective.reads_originals,
    )  # fmt: skip
