"""Image↔text retrieval on a CSV of pairs: recall@k both ways and, with an attack, retrieval ASR.

Pair i's image should retrieve caption i (image→text) and caption i image i (text→image). Retrieval ASR
is the backdoor seen through retrieval: the gallery also holds the attack's target captions, and a
triggered image (one whose own caption does not name the target) counts as a success at k when a caption
naming the target is among its k nearest captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from clipbackdoor.attacks import Trigger
from clipbackdoor.attacks.poison import names_target
from clipbackdoor.data import BadRowLog, PairDataset, collate_skipping_bad
from clipbackdoor.data.transforms import to_unit
from clipbackdoor.models import ClipBundle


def _share_at_k(hits: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """% of query rows with a hit among their first k columns of ``hits`` (rows x top-k, most similar first)."""
    return {k: 100.0 * int(hits[:, :k].any(dim=1).sum()) / len(hits) for k in ks}


def recall_at_k(similarity: torch.Tensor, truth: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """% of query rows whose true column (``truth[row]``) is among their k most similar columns."""
    top = similarity.topk(min(max(ks), similarity.shape[1]), dim=1).indices
    return _share_at_k(top == truth.unsqueeze(1), ks)


def hit_rate_at_k(similarity: torch.Tensor, wanted: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """% of query rows with any ``wanted`` column (a boolean mask over columns) among their k most similar."""
    top = similarity.topk(min(max(ks), similarity.shape[1]), dim=1).indices
    return _share_at_k(wanted[top], ks)


class RetrievalEvaluator:
    def __init__(
        self,
        dataset: PairDataset,
        batch_size: int,
        bad_rows: BadRowLog,
        ks: Sequence[int] = (1, 5, 10),
        trigger: Trigger | None = None,
        target_names: Sequence[str] = (),
        target_captions: Sequence[str] = (),
    ):
        self.bad_rows, self.ks = bad_rows, tuple(ks)
        self.trigger, self.target_captions = trigger, list(target_captions)
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_skipping_bad)
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
        images, texts, triggered, names_it = [], [], [], []
        for batch in self.loader:
            self.bad_rows.add(batch["bad_rows"])
            if "image" not in batch:
                continue
            pixels = to_unit(batch["image"].to(device))
            images.append(model.encode_image(normalize(pixels), normalize=True).float())
            texts.append(model.encode_text(batch["text"].to(device), normalize=True).float())
            if self.trigger is not None:
                names = self.names_target[batch["index"]]
                names_it.append(names)
                if not names.all():
                    poisoned = self.trigger.apply(pixels[~names.to(device)], batch["index"][~names])
                    triggered.append(model.encode_image(normalize(poisoned), normalize=True).float())
        model.train(was_training)
        if not images:
            raise RuntimeError("retrieval set yielded no readable pairs")
        image, text = torch.cat(images), torch.cat(texts)
        truth = torch.arange(len(image), device=image.device)
        result: dict[str, float] = {"retrieval_n": len(image)}
        for k, v in recall_at_k(image @ text.T, truth, self.ks).items():
            result[f"retrieval_i2t_r{k}"] = v
        for k, v in recall_at_k(text @ image.T, truth, self.ks).items():
            result[f"retrieval_t2i_r{k}"] = v
        if self.trigger is not None and triggered:
            tokens = bundle.tokenizer(self.target_captions).to(device)
            target_text = model.encode_text(tokens, normalize=True).float()
            gallery = torch.cat([text, target_text])
            wanted = torch.cat([*names_it, torch.ones(len(target_text), dtype=torch.bool)]).to(gallery.device)
            for k, v in hit_rate_at_k(torch.cat(triggered) @ gallery.T, wanted, self.ks).items():
                result[f"retrieval_asr_r{k}"] = v
        return result
