"""Zero-shot classification: class embeddings from prompt templates, top-k accuracy on a labelled set.

The classifier follows CLIP (DESIGN §5): each template filled with the class name is encoded and
L2-normalised, the template embeddings are averaged and the mean is re-normalised; open_clip's
``build_zero_shot_classifier`` does exactly this.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip import build_zero_shot_classifier
from torch.utils.data import DataLoader

from clipbackdoor.data import BadRowLog, LabelledDataset, collate_skipping_bad
from clipbackdoor.models import ClipBundle


def class_embeddings(
    bundle: ClipBundle, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> torch.Tensor:
    """[embed_dim, num_classes] zero-shot weights."""
    return build_zero_shot_classifier(
        bundle.model,
        bundle.tokenizer,
        list(classnames),
        list(templates),
        num_classes_per_batch=None,
        device=device,
    )


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[int, int]:
    """How many rows have their label among the ``k`` highest logits, for each k."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == labels.unsqueeze(1)
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


class ZeroShotEvaluator:
    """Scores a model on one labelled set; the loader is built once and reused every epoch."""

    def __init__(self, dataset: LabelledDataset, batch_size: int, num_workers: int, bad_rows: BadRowLog):
        self.dataset = dataset
        self.bad_rows = bad_rows
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_skipping_bad,
            persistent_workers=num_workers > 0,
        )

    @torch.no_grad()
    def __call__(self, bundle: ClipBundle, device: torch.device) -> dict[str, float]:
        model, normalize = bundle.model, bundle.normalize.to(device)
        was_training = model.training
        model.eval()
        weights = class_embeddings(bundle, self.dataset.classnames, self.dataset.templates, device)
        correct = {1: 0, 5: 0}
        seen = 0
        for batch in self.loader:
            self.bad_rows.add(batch["bad_rows"])
            if "image" not in batch:
                continue
            images = normalize(batch["image"].to(device, non_blocking=True))
            logits = model.encode_image(images, normalize=True) @ weights
            for k, n in topk_correct(logits.float(), batch["label"].to(device), correct).items():
                correct[k] += n
            seen += len(batch["label"])
        model.train(was_training)
        if seen == 0:
            raise RuntimeError("evaluation set yielded no readable images")
        return {"clean_top1": 100.0 * correct[1] / seen, "clean_top5": 100.0 * correct[5] / seen, "n": seen}
