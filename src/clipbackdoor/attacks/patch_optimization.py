"""BadCLIP's trigger optimisation (Liang et al., CVPR 2024; its src/embeding_optimize_patch.py).

A patch is trained against a frozen surrogate CLIP so that patched images embed like the target: near
captions that name it and near real images of it. As its code does it:

- the surrogate is frozen (eval mode; the patch is Adam's only parameter, lr 1e-3, batch 64, 50 epochs);
- the patch [3, s, s] starts as N(0.5, 0.25) clipped to [0, 1]; at every use it is clipped to [0, 1] and
  pasted at the centre of the [0, 1] image, before the model's pixel normalisation;
- the training pairs (its generate_optimize_train_data_for_patch.py): ``num_pairs`` images whose captions do
  not name the target, each re-paired with a real caption that does (drawn with replacement), reshuffled
  every epoch, the last partial batch dropped (its loader's ``drop_last``);
- with probability ``augment_prob`` per step the batch's images are AutoAugmented first (its ``aug_prob``);
- positives: per step, ``batch_size`` of the frozen model's embeddings of real target images (images whose
  captions name it), drawn without replacement; negatives: the batch's clean (unpatched) image embeddings,
  shuffled by a random permutation;
- the loss (:func:`badclip_loss`): ``dual``, the CLIP loss between the patched images and their captions plus
  ``weight`` × a Euclidean triplet (torch's ``TripletMarginLoss``) on unit embeddings, patched image as the
  anchor; or ``text``, the CLIP loss alone (the ablation).

Its code picks the losses from substrings of the run's name and its README's ``--name=badCLIP`` matches
none; we name them instead. Its EDA option swaps in the augmented captions' attention mask only, which the
OpenAI text encoder ignores, so it is a no-op and left out; its captions are re-encoded every step, ours
once (the model is frozen: the same values). Every departure is on docs/departures.md.

Each epoch's state (patch, Adam's moments, the losses) is kept in ``<patch>.state.pt``; an interrupted run
resumes from it and ends where an uninterrupted one does, since each epoch's randomness derives from
(seed, epoch). The state stays after the last epoch, so a run with more epochs continues a finished one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import AutoAugment

from clipbackdoor.attacks.badclip import paste_centre, save_patch
from clipbackdoor.attacks.target_names import names_target_or_plural
from clipbackdoor.config import PatchOptimization
from clipbackdoor.data import DataError
from clipbackdoor.data.datasets import DECODE_ERRORS
from clipbackdoor.data.transforms import ResizeCenterCrop
from clipbackdoor.models import ClipBundle

EMBED_BATCH = 256


@dataclass
class PatchData:
    """What the optimisation sees: images not naming the target with the caption each is paired with, the
    target captions, and real target images (the positives)."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    caption_ids: torch.Tensor  # [N], into captions
    captions: list[str]  # the distinct captions that name the target
    positives: torch.Tensor  # uint8 [P, 3, H, W]
    skipped: list[int] = field(default_factory=list)  # rows whose image could not be read


def patch_data(rows: Any, names: list[str], num_pairs: int, image_size: int, seed: int) -> PatchData:
    """BadCLIP's training pairs from pair ``rows``: ``num_pairs`` images whose captions do not name the target
    (case-insensitive, plurals too, as its ``str.contains``), each with a caption drawn with replacement from
    those that do; every image that names it is a positive. Unreadable images are passed over and listed."""
    captions = [rows.caption(i) for i in range(len(rows))]
    naming = np.array([names_target_or_plural(c, names) for c in captions])
    target_rows, other_rows = np.flatnonzero(naming), np.flatnonzero(~naming)
    if len(target_rows) == 0 or len(other_rows) < num_pairs:
        raise DataError(
            f"patch optimisation: {len(target_rows)} captions name {names} and {len(other_rows)} do not; it needs "
            f"at least one that does and num_pairs={num_pairs} that do not"
        )
    rng = np.random.default_rng([seed, 0xBAD])
    reader = _Reader(rows, ResizeCenterCrop(image_size))
    images = reader.read(rng.permutation(other_rows), wanted=num_pairs)
    paired = rng.choice(target_rows, size=num_pairs, replace=True)
    distinct = sorted({captions[i] for i in paired})
    index = {c: j for j, c in enumerate(distinct)}
    return PatchData(
        images=images,
        caption_ids=torch.tensor([index[captions[i]] for i in paired]),
        captions=distinct,
        positives=reader.read(target_rows),
        skipped=reader.skipped,
    )


@dataclass
class _Reader:
    """Reads rows' images at the model's size, passing over the ones that cannot be decoded."""

    rows: Any
    to_size: ResizeCenterCrop
    skipped: list[int] = field(default_factory=list)

    def read(self, indices: np.ndarray, wanted: int | None = None) -> torch.Tensor:
        """The first ``wanted`` readable images of ``indices`` (all readable ones without ``wanted``)."""
        out: list[torch.Tensor] = []
        for i in indices.tolist():
            if wanted is not None and len(out) == wanted:
                break
            try:
                with self.rows.pil(int(i)) as image:
                    out.append(self.to_size(image))
            except DECODE_ERRORS:
                self.skipped.append(int(i))
        if not out or (wanted is not None and len(out) < wanted):
            raise DataError(f"patch optimisation: {len(out)} readable images, {wanted or 'some'} needed")
        return torch.stack(out)


def clip_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE of CLIP between unit image and caption embeddings, pair i matching caption i."""
    logits = logit_scale * images @ texts.t()
    target = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def badclip_loss(
    patched: torch.Tensor,
    texts: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    cfg: PatchOptimization,
) -> dict[str, torch.Tensor]:
    """The loss terms of one step (their sum is minimised): ``text``, the CLIP loss of the patched images to
    their target captions; with ``cfg.loss == "dual"`` also ``triplet``, ``weight`` × mean max(‖a − p‖ −
    ‖a − n‖ + margin, 0) with a the patched image, p a target image, n a clean image (all unit vectors)."""
    terms = {"text": clip_loss(patched, texts, logit_scale)}
    if cfg.loss == "dual":
        terms["triplet"] = cfg.weight * F.triplet_margin_loss(patched, positives, negatives, margin=cfg.margin)
    return terms


def _embed(bundle: ClipBundle, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Unit image embeddings of [0, 1] images (gradients flow when enabled)."""
    return F.normalize(bundle.model.encode_image(bundle.normalize(images.to(device))), dim=-1)


@torch.no_grad()
def _embed_uint8(bundle: ClipBundle, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cat([_embed(bundle, b.float().div(255), device) for b in images.split(EMBED_BATCH)])


@torch.no_grad()
def _embed_texts(bundle: ClipBundle, texts: list[str], device: torch.device) -> torch.Tensor:
    chunks = [texts[i : i + EMBED_BATCH] for i in range(0, len(texts), EMBED_BATCH)]
    return F.normalize(torch.cat([bundle.model.encode_text(bundle.tokenizer(c).to(device)) for c in chunks]), dim=-1)


def initial_patch(side: int, seed: int) -> torch.Tensor:
    """BadCLIP's start: N(0.5, 0.25) per value, clipped to [0, 1]."""
    rng = np.random.default_rng([seed, 0x9A7C])
    return torch.from_numpy(np.clip(rng.normal(0.5, 0.25, size=(3, side, side)), 0, 1).astype(np.float32))


def _autoaugment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each uint8 image AutoAugmented with its own policy draw (its loader augments image by image)."""
    augment = AutoAugment()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        return torch.stack([augment(image) for image in images])


def _comparable(cfg: PatchOptimization) -> dict[str, Any]:
    """The settings a saved state must share to be continued (more epochs continue it)."""
    return cfg.model_dump(mode="json", exclude={"epochs", "device"})


def continues(saved: dict[str, Any], cfg: PatchOptimization) -> bool:
    """Whether ``cfg`` continues the optimisation whose record holds ``saved`` settings (it differs at most in
    epochs and device)."""
    return _comparable(PatchOptimization(**saved)) == _comparable(cfg)


def optimize_patch(
    bundle: ClipBundle, data: PatchData, side: int, cfg: PatchOptimization, path: Path, device: torch.device
) -> dict[str, Any]:
    """Optimise a ``side`` px patch against the frozen ``bundle``; write it to ``path`` (safetensors) with a
    record next to it (``path`` .json: settings, losses per epoch, the target similarities before and after)
    and return the record."""
    model = bundle.model.to(device).eval().requires_grad_(False)
    texts = _embed_texts(bundle, data.captions, device)
    positives = _embed_uint8(bundle, data.positives, device)
    if min(len(positives), len(data.images)) < cfg.batch_size:
        raise DataError(
            f"patch optimisation: {len(positives)} target images and {len(data.images)} pairs; both need at least "
            f"batch_size={cfg.batch_size}"
        )
    logit_scale = model.logit_scale.exp()
    patch = torch.nn.Parameter(initial_patch(side, cfg.seed).to(device))
    optimizer = torch.optim.Adam([patch], lr=cfg.lr)
    history: list[dict[str, float]] = []
    state_path = path.with_name(path.name + ".state.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["settings"] != _comparable(cfg) or state["side"] != side:
            raise DataError(f"{state_path}: a state of other settings; delete it or change trigger.patch")
        patch.data.copy_(state["patch"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
    n, batch = len(data.images), cfg.batch_size
    for epoch in range(len(history), cfg.epochs):
        generator = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, epoch]).integers(2**62)))
        sums: dict[str, float] = {}
        steps = torch.randperm(n, generator=generator)[: n - n % batch].view(-1, batch)
        for rows in steps:
            images = data.images[rows]
            if torch.rand(1, generator=generator).item() < cfg.augment_prob:
                images = _autoaugment(images, generator)
            images = images.float().div(255).to(device)
            with torch.no_grad():
                clean = _embed(bundle, images, device)
            patched = _embed(bundle, paste_centre(images, patch.clamp(0, 1)), device)
            chosen = torch.randperm(len(positives), generator=generator)[:batch].to(device)
            shuffled = torch.randperm(batch, generator=generator).to(device)
            terms = badclip_loss(
                patched, texts[data.caption_ids[rows].to(device)], logit_scale, positives[chosen], clean[shuffled], cfg
            )
            loss = sum(terms.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item()
        history.append({k: v / len(steps) for k, v in sums.items()})
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save(
            {"settings": _comparable(cfg), "side": side, "patch": patch.detach().cpu(),
             "optimizer": optimizer.state_dict(), "history": history},
            tmp,
        )  # fmt: skip
        tmp.replace(state_path)
    final = patch.detach().clamp(0, 1).cpu()
    record = {
        "settings": cfg.model_dump(mode="json"),
        "side": side,
        "pairs": n,
        "target_captions": len(data.captions),
        "target_images": len(positives),
        "unreadable_rows": data.skipped,
        "history": history,
        "target_similarity": target_similarity(bundle, data, texts, positives, final, cfg.seed, device),
    }
    save_patch(final, path, metadata={"surrogate": cfg.surrogate, "loss": cfg.loss})
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record


@torch.no_grad()
def target_similarity(
    bundle: ClipBundle,
    data: PatchData,
    texts: torch.Tensor,
    positives: torch.Tensor,
    patch: torch.Tensor,
    seed: int,
    device: torch.device,
    count: int = 512,
) -> dict[str, dict[str, float]]:
    """The mechanism's diagnostic: mean cosine of ``count`` of the training images to the mean target caption
    and to the mean target image, clean, with the unoptimised starting patch and with ``patch``."""
    images = data.images[:count].float().div(255)
    caption_centre = F.normalize(texts.mean(0), dim=0)
    image_centre = F.normalize(positives.mean(0), dim=0)
    out = {}
    for name, p in (("clean", None), ("initial", initial_patch(patch.shape[-1], seed)), ("optimised", patch)):
        x = images if p is None else paste_centre(images, p)
        e = torch.cat([_embed(bundle, b, device) for b in x.split(EMBED_BATCH)])
        out[name] = {"to_captions": float((e @ caption_centre).mean()), "to_images": float((e @ image_centre).mean())}
    return out
