"""Zero-shot evaluation: clean accuracy, attack success rate and robust accuracy in one pass.

The classifier follows CLIP (DESIGN §5): each template filled with the class name is encoded and
L2-normalised, the template embeddings are averaged and the mean is re-normalised; open_clip's
``build_zero_shot_classifier`` does exactly this.

Clean accuracy is also given as the mean per-class recall (balanced accuracy), the metric CLIP_benchmark
reports next to top-1 and top-5.

With an attack, each decoded batch is scored twice on the device: as it is (clean accuracy) and with the
trigger applied to its images whose true class is not the target: the same resized, cropped pixels, or with
``eval.triggered_copy: squash`` the whole image squashed to the model's size, as the study did (its
``ImageLabelDataset`` triggers ``image.resize((224, 224))`` and crops the clean copy).
- ASR = share of those triggered images predicted as the target (top-1; top-5: target among the top 5);
- RA  = share of those triggered images still predicted as their true class.
Both denominators exclude target-class images (49,950 on ImageNet val), as the field defines them.

Under a process group every rank scores its share of the batches (:class:`EvalShard`) and the counts are
summed, so all ranks return the single-process result; each rank builds the (small) classifier itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from open_clip import build_zero_shot_classifier

from clipbackdoor.attacks import Trigger
from clipbackdoor.data import BadRow, BadRowLog, LabelledDataset
from clipbackdoor.data.transforms import to_unit
from clipbackdoor.evaluation.shard import EvalShard
from clipbackdoor.models import ClipBundle


@dataclass(frozen=True)
class Attack:
    """What ASR is measured against: a trigger and the index of the target among the eval classes."""

    trigger: Trigger
    target: int


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


class BackdoorTally:
    """Running counts for ASR (top-1/top-5) and RA over triggered non-target images."""

    def __init__(self, target: int):
        self.target = target
        self.n = self.asr1 = self.asr5 = self.ra1 = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        target = torch.full_like(labels, self.target)
        hits = topk_correct(logits, target, (1, 5))
        self.asr1 += hits[1]
        self.asr5 += hits[5]
        self.ra1 += topk_correct(logits, labels, (1,))[1]
        self.n += len(labels)

    def counts(self) -> list[int]:
        """This rank's counts, to be summed over the ranks."""
        return [self.n, self.asr1, self.asr5, self.ra1]

    def set_counts(self, counts: list[int]) -> None:
        """Take the counts summed over the ranks."""
        self.n, self.asr1, self.asr5, self.ra1 = counts

    def result(self) -> dict[str, float]:
        pct = 100.0 / max(1, self.n)
        return {
            "asr_top1": self.asr1 * pct,
            "asr_top5": self.asr5 * pct,
            "ra_top1": self.ra1 * pct,
            "n_triggered": self.n,
        }


class ZeroShotEvaluator:
    """Scores a model on one labelled set; the loader is built once and reused every epoch.

    With ``world_size > 1`` every rank must call it: each scores its shard and all return the same result.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        batch_size: int,
        num_workers: int,
        bad_rows: BadRowLog,
        attack: Attack | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.dataset = dataset
        self.bad_rows = bad_rows
        self.attack = attack
        self.shard = EvalShard(rank, world_size)
        self.loader = self.shard.loader(dataset, batch_size, num_workers)

    @torch.no_grad()
    def __call__(self, bundle: ClipBundle, device: torch.device) -> dict[str, float]:
        model, normalize = bundle.model, bundle.normalize.to(device)
        was_training = model.training
        model.eval()
        weights = class_embeddings(bundle, self.dataset.classnames, self.dataset.templates, device)
        correct = {1: 0, 5: 0}
        seen = 0
        classes = len(self.dataset.classnames)
        per_class = torch.zeros(2, classes, dtype=torch.int64, device=device)  # [seen, top-1 hits] per class
        tally = BackdoorTally(self.attack.target) if self.attack else None
        bad: list[BadRow] = []  # logged after the pass: a rank raising mid-pass would leave the others waiting
        for batch in self.loader:
            bad += batch["bad_rows"]
            if "image" not in batch:
                continue
            images = to_unit(batch["image"].to(device, non_blocking=True))
            labels = batch["label"].to(device)
            logits = model.encode_image(normalize(images), normalize=True) @ weights
            for k, n in topk_correct(logits.float(), labels, correct).items():
                correct[k] += n
            seen += len(labels)
            per_class[0].index_add_(0, labels, torch.ones_like(labels))
            per_class[1].index_add_(0, labels, (logits.argmax(dim=1) == labels).long())
            if self.attack is not None and tally is not None:
                keep = labels != self.attack.target
                if keep.any():
                    source = to_unit(batch["image_squashed"].to(device)) if "image_squashed" in batch else images
                    triggered = self.attack.trigger.apply(source[keep], batch["index"][keep.cpu()])
                    logits_t = model.encode_image(normalize(triggered), normalize=True) @ weights
                    tally.add(logits_t.float(), labels[keep])
        model.train(was_training)
        seen, correct[1], correct[5], *backdoor = self.shard.counts(
            [seen, correct[1], correct[5], *(tally.counts() if tally else [])], device
        )
        per_class = self.shard.sum(per_class)
        if tally is not None:
            tally.set_counts(backdoor)
        self.bad_rows.add(self.shard.bad_rows(bad))
        if seen == 0:
            raise RuntimeError("evaluation set yielded no readable images")
        present = per_class[0] > 0  # as scikit-learn's balanced accuracy (CLIP_benchmark's): classes with images
        recall = (per_class[1][present] / per_class[0][present]).mean().item()
        result = {
            "clean_top1": 100.0 * correct[1] / seen,
            "clean_top5": 100.0 * correct[5] / seen,
            "clean_mean_per_class_recall": 100.0 * recall,
            "n": seen,
        }
        if tally is not None:
            result.update(tally.result())
        return result
