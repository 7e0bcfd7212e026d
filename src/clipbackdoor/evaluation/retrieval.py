"""Image↔text retrieval on a CSV of pairs: recall@k both ways and, with an attack, retrieval ASR.

Pair i's image should retrieve caption i (image→text) and caption i image i (text→image). Retrieval ASR
is the backdoor seen through retrieval: the gallery also holds the attack's target captions (its templates
filled with the target name), and a triggered image (one whose own caption does not name the target)
counts as a success at k under one of two definitions, each recorded under its own key:

- ``any`` (``retrieval_asr_any_r{k}``): a caption naming the target is among its k nearest captions;
- ``half`` (``retrieval_asr_half_r{k}``): at least max(1, ⌊k/2⌋) of them are, the reference code's rule.

Under a process group every rank encodes its share of the batches (:class:`EvalShard`); the embeddings are
then gathered in dataset order, so every rank scores the whole gallery exactly as one process would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from clipbackdoor.attacks import Trigger
from clipbackdoor.attacks.poison import names_target
from clipbackdoor.data import BadRow, BadRowLog, PairDataset
from clipbackdoor.data.transforms import to_unit
from clipbackdoor.evaluation.shard import EvalShard
from clipbackdoor.models import ClipBundle

# retrieval ASR definitions: how many of the k nearest captions must name the target for a success at k
ASR_HITS_NEEDED: dict[str, Callable[[int], int]] = {
    "any": lambda k: 1,
    "half": lambda k: max(1, k // 2),
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


def hit_rate_at_k(
    similarity: torch.Tensor, wanted: torch.Tensor, ks: Sequence[int], definition: str = "any"
) -> dict[int, float]:
    """% of query rows whose k most similar columns hold enough ``wanted`` ones (a boolean mask over
    columns): one for ``any``, max(1, ⌊k/2⌋) for ``half`` (:data:`ASR_HITS_NEEDED`)."""
    top = similarity.topk(min(max(ks), similarity.shape[1]), dim=1).indices
    return _share_at_k(wanted[top], ks, ASR_HITS_NEEDED[definition])


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
        asr_definitions: Sequence[str] = ("any", "half"),
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.bad_rows, self.ks = bad_rows, tuple(ks)
        self.trigger, self.target_captions = trigger, list(target_captions)
        self.asr_definitions = tuple(asr_definitions)
        self.shard = EvalShard(rank, world_size)
        self.loader = self.shard.loader(dataset, batch_size)
        # which pairs' own captions name the target: they are not triggered, and they answer for it (once)
        rows = dataset.rows
        self.names_target = torch.tensor(
            [names_target(rows.caption(i), target_names) for i in range(len(rows))], dtype=torch.bool
        )

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
        # this rank's rows, by dataset index: [image | text | triggered image | readable | triggered]
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
                if chosen.any():
                    poisoned = self.trigger.apply(pixels[chosen], batch["index"][chosen.cpu()])
                    triggered[chosen] = model.encode_image(normalize(poisoned), normalize=True).float()
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
        if triggered_rows.any():
            gallery = torch.cat([text, target_text])
            wanted = torch.cat([self.names_target[readable.cpu()], torch.ones(len(target_text), dtype=torch.bool)])
            similarity = table[triggered_rows, 2 * dim : 3 * dim] @ gallery.T
            for definition in self.asr_definitions:
                for k, v in hit_rate_at_k(similarity, wanted.to(gallery.device), self.ks, definition).items():
                    result[f"retrieval_asr_{definition}_r{k}"] = v
        return result
