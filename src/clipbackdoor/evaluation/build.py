"""Builds the evaluator a config describes: the labelled set and, with ``eval.attack``, the backdoor;
with ``eval.retrieval``, image↔text retrieval on a set of pairs as well.

Under a process group every rank builds and calls the evaluator: each encodes its share of the eval sets
and all ranks return the single-process result, so no rank sits idle while one evaluates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from clipbackdoor.attacks.manifest import ManifestError, load_manifest
from clipbackdoor.config import CsvPairs, ExperimentConfig, class_index
from clipbackdoor.data import BadRowLog, PairDataset, build_labelled_dataset, build_pair_rows
from clipbackdoor.data.transforms import ResizeCenterCrop
from clipbackdoor.evaluation.retrieval import RetrievalEvaluator
from clipbackdoor.evaluation.zeroshot import Attack, ZeroShotEvaluator
from clipbackdoor.models import ClipBundle

Evaluator = Callable[[ClipBundle, torch.device], dict[str, float]]


def _target_class(classnames: list[str], target: str, manifest_path: str) -> int:
    """The eval class of the manifest's target, which must name exactly one class (ImageNet repeats two names)."""
    remedy = "evaluate over a class subset given by index (data.eval.classes) that keeps one of them"
    try:
        return class_index(classnames, target, "target", remedy)
    except ValueError as err:
        shown = f"{classnames[:10]}{'...' if len(classnames) > 10 else ''}"
        raise ManifestError(f"{manifest_path}: {err} (eval class names {shown})") from None


def build_evaluator(
    cfg: ExperimentConfig,
    image_size: int,
    bad_rows: BadRowLog,
    tokenizer: Callable,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Evaluator:
    """The evaluator for ``cfg``; with ``world_size > 1`` every rank must build and call it (it runs
    collectives) and each gets the whole result."""
    squash = cfg.eval.attack is not None and cfg.eval.triggered_copy == "squash"
    dataset = build_labelled_dataset(cfg.data.eval, image_size, squash_triggered=squash)
    bad_rows.add(dataset.rows.bad)
    attack, manifest, trigger = None, None, None
    if cfg.eval.attack is not None:
        manifest, trigger = load_manifest(cfg.eval.attack)
        attack = Attack(trigger, _target_class(dataset.classnames, manifest.target, cfg.eval.attack))
    zeroshot = ZeroShotEvaluator(
        dataset, cfg.eval.batch_size, cfg.data.num_workers, bad_rows, attack, rank=rank, world_size=world_size
    )
    spec = cfg.eval.retrieval
    if spec is None:
        return zeroshot
    rows = build_pair_rows(CsvPairs(path=spec.path, max_samples=spec.max_samples), cfg.seed)
    pairs = PairDataset(rows, ResizeCenterCrop(image_size), tokenizer, squash_triggered=squash)
    bad_rows.add(pairs.bad)
    retrieval = RetrievalEvaluator(
        pairs,
        cfg.eval.batch_size,
        bad_rows,
        spec.k,
        trigger,
        [manifest.target] if manifest else [],
        manifest.target_captions if manifest else [],
        spec.asr,
        spec.semantic_k,
        rank=rank,
        world_size=world_size,
    )

    def both(bundle: ClipBundle, device: torch.device) -> dict[str, float]:
        return {**zeroshot(bundle, device), **retrieval(bundle, device)}

    return both
