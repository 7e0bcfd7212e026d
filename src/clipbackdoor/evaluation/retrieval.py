"""Image↔text retrieval on a CSV of pairs: recall@k both ways and, with an attack, retrieval ASR.

Pair i's image should retrieve caption i (image→text) and caption i image i (text→image). Retrieval ASR
is the backdoor seen through retrieval, recorded under three definitions, each under its own key.

Ours: the gallery also holds the attack's target captions (its templates filled with the target name), and a
triggered image (one whose own caption does not name the target, as a whole word) counts as a success at k

- ``any`` (``retrieval_asr_any_r{k}``): when a caption naming the target is among its k nearest captions;
- ``half`` (``retrieval_asr_half_r{k}``): when at least max(1, ⌊k/2⌋) of them are.

The study's, ``study`` (``retrieval_asr_study_r{k}``), as attack-cleanclip's utils/retrieval.py ``itm_eval``
with src/evaluate.py's MSCOCO settings computes it: the gallery is the test captions only; every test image
is triggered and counts; a hit is a caption that names the target (case-insensitive, plurals included: the
reference hard-codes the 41 MSCOCO test captions containing "banana") or one of the ``semantic_k`` (20,
``closest_k_semantic``) captions nearest to the mean embedding of the target captions (the 80 ImageNet
templates filled with the target, for the study's recipes); success at k needs max(1, ⌊k/2⌋) hits. The
reference computed those 20 once, with whichever model it evaluated first, and reused them "irrespective of
the model"; here the model being evaluated computes them, at every evaluation, so the number depends on
nothing but that model.

Under a process group every rank encodes its share of the batches (:class:`EvalShard`); the embeddings are
then gathered in dataset order, so every rank scores the whole gallery exactly as one process would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from clipbackdoor.attacks import Trigger
from clipbackdoor.attacks.target_names import names_target, names_target_or_plural
from clipbackdoor.data import BadRow, BadRowLog, PairDataset
from clipbackdoor.data.transforms import to_unit
from clipbackdoor.evaluation.shard import EvalShard
from clipbackdoor.models import ClipBundle

# retrieval ASR definitions: how many of the k nearest captions must name the target for a success at k
ASR_HITS_NEEDED: dict[str, Callable[[int], int]] = {
    "any": lambda k: 1,
    "half": lambda k: max(1, k // 2),
    "study": lambda k: max(1, k // 2),
}


def _share_at_k(
    hits: torch.Tensor, ks: Sequence[int], needed: Callable[[int], int] = ASR_HITS_NEEDED["any"]
) -> dict[int, float]:
    """% of query rows with at least ``needed(k)`` hits among their first k columns of ``hits`` (rows x top-k,
    most similar first)."""
    return {k: 100.0 * int((hits[:, :k].sum(dim=1) >= needed(k)).sum()) / len(hits) for k in ks}


def recall_at_k(similarity: torch.Tensor, truth: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """% of query rows whose true column (``truth[row]``) is among their k most similar columns."""
    top = similarity.topk(min(max(ks), similarity.shape[1]), dim=1).indices
    return _share_at_k(top == truth.unsqueeze(1), ks)


def nearest_to_mean(text: torch.Tensor, target_text: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` rows of ``text`` (unit rows) nearest to the re-normalised mean of the unit
    rows ``target_text``: the study's semantic hits (``find_closest_captions_for_target_label_semantically``)."""
    mean = torch.nn.functional.normalize(target_text.mean(dim=0), dim=0)
    mask = torch.zeros(len(text), dtype=torch.bool, device=text.device)
    mask[(text @ mean).topk(min(k, len(text))).indices] = True
    return mask


def hit_rate_at_k(
    similarity: torch.Tensor, wanted: torch.Tensor, ks: Sequence[int], definition: str = "any"
) -> dict[int, float]:
    """% of query rows whose k most similar columns hold enough ``wanted`` ones (a boolean mask over
    columns): one for ``any``, max(1, ⌊k/2⌋) for ``half`` (:data:`ASR_HITS_NEEDED`)."""
    top = similarity.topk(min(max(ks), similarity.shape[1]), dim=1).indices
    return _share_at_k(wanted[top], ks, ASR_HITS_NEEDED[definition])


def study_retrieval_asr(
    triggered: torch.Tensor,
    text: torch.Tensor,
    named: torch.Tensor,
    target_text: torch.Tensor,
    ks: Sequence[int],
    semantic_k: int,
) -> dict[int, float]:
    """The study's retrieval ASR@k: every triggered image (unit rows) against the test captions ``text`` only;
    hits are the captions ``named`` (naming the target) and the ``semantic_k`` nearest to ``target_text``'s
    mean; a success needs max(1, ⌊k/2⌋) hits among the k nearest."""
    wanted = named | nearest_to_mean(text, target_text, semantic_k)
    return hit_rate_at_k(triggered @ text.T, wanted, ks, "study")


class RetrievalEvaluator:
    """Scores a model on a set of pairs; with ``world_size > 1`` every rank must call it, all get the result."""

    def __init__(
        self,
        dataset: PairDataset,
        batch_size: int,
        bad_rows: BadRowLog,
        ks: Sequence[int] = (1, 5, 10),
        trigger: Trigger | None = None,
        target_names: Sequence[str] = (),
        target_captions: Sequence[str] = (),
        asr_definitions: Sequence[str] = ("any", "half", "study"),
        semantic_k: int = 20,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.bad_rows, self.ks = bad_rows, tuple(ks)
        self.trigger, self.target_captions = trigger, list(target_captions)
        self.asr_definitions, self.semantic_k = tuple(asr_definitions), semantic_k
        self.trigger_all = trigger is not None and "study" in self.asr_definitions  # the study triggers every image
        self.shard = EvalShard(rank, world_size)
        self.loader = self.shard.loader(dataset, batch_size)
        # which pairs' own captions name the target: they are not triggered, and they answer for it (once)
        rows = dataset.rows
        captions = [rows.caption(i) for i in range(len(rows))]
        self.names_target = torch.tensor([names_target(c, target_names) for c in captions], dtype=torch.bool)
        self.study_hits = torch.tensor([names_target_or_plural(c, target_names) for c in captions], dtype=torch.bool)

    @torch.no_grad()
    def __call__(self, bundle: ClipBundle, device: torch.device) -> dict[str, float]:
        model, normalize = bundle.model, bundle.normalize.to(device)
        was_training = model.training
        model.eval()
        dim = model.encode_text(bundle.tokenizer([""]).to(device)).shape[1]  # known even to a rank without a batch
        target_text = torch.zeros(0, dim, device=device)
        if self.trigger is not None and self.target_captions:
            tokens = bundle.tokenizer(self.target_captions).to(device)
            target_text = model.encode_text(tokens, normalize=True).float()
        # this rank's rows, by dataset index: [image | text | triggered image | readable | ours triggers it]
        parts, indices = [torch.zeros(0, 3 * dim + 2, device=device)], [torch.zeros(0, dtype=torch.long)]
        bad: list[BadRow] = []  # logged after the pass: a rank raising mid-pass would leave the others waiting
        for batch in self.loader:
            bad += batch["bad_rows"]
            if "image" not in batch:
                continue
            pixels = to_unit(batch["image"].to(device))
            image = model.encode_image(normalize(pixels), normalize=True).float()
            text = model.encode_text(batch["text"].to(device), normalize=True).float()
            triggered = torch.zeros_like(image)
            chosen = torch.zeros(len(image), dtype=torch.bool, device=device)
            if self.trigger is not None:
                chosen = ~self.names_target[batch["index"]].to(device)
                apply = torch.ones_like(chosen) if self.trigger_all else chosen
                if apply.any():
                    source = to_unit(batch["image_squashed"].to(device)) if "image_squashed" in batch else pixels
                    poisoned = self.trigger.apply(source[apply], batch["index"][apply.cpu()])
                    triggered[apply] = model.encode_image(normalize(poisoned), normalize=True).float()
            flags = torch.stack([torch.ones_like(chosen), chosen], dim=1).float()
            parts.append(torch.cat([image, text, triggered, flags], dim=1))
            indices.append(batch["index"])
        model.train(was_training)
        table = self.shard.rows(len(self.names_target), torch.cat(indices), torch.cat(parts))
        self.bad_rows.add(self.shard.bad_rows(bad))
        readable, triggered_rows = table[:, 3 * dim] > 0, table[:, 3 * dim + 1] > 0
        if not readable.any():
            raise RuntimeError("retrieval set yielded no readable pairs")
        image, text = table[readable, :dim], table[readable, dim : 2 * dim]
        truth = torch.arange(len(image), device=image.device)
        result: dict[str, float] = {"retrieval_n": len(image)}
        for k, v in recall_at_k(image @ text.T, truth, self.ks).items():
            result[f"retrieval_i2t_r{k}"] = v
        for k, v in recall_at_k(text @ image.T, truth, self.ks).items():
            result[f"retrieval_t2i_r{k}"] = v
        ours = [d for d in self.asr_definitions if d != "study"]
        if triggered_rows.any() and ours:
            gallery = torch.cat([text, target_text])
            wanted = torch.cat([self.names_target[readable.cpu()], torch.ones(len(target_text), dtype=torch.bool)])
            similarity = table[triggered_rows, 2 * dim : 3 * dim] @ gallery.T
            for definition in ours:
                for k, v in hit_rate_at_k(similarity, wanted.to(gallery.device), self.ks, definition).items():
                    result[f"retrieval_asr_{definition}_r{k}"] = v
        if self.trigger_all and len(target_text):
            triggered = table[readable, 2 * dim : 3 * dim]
            named = self.study_hits[readable.cpu()].to(text.device)
            for k, v in study_retrieval_asr(triggered, text, named, target_text, self.ks, self.semantic_k).items():
                result[f"retrieval_asr_study_r{k}"] = v
        return result
