"""Builds the evaluator a config describes: the labelled set and, with ``eval.attack``, the backdoor."""

from __future__ import annotations

from clipbackdoor.attacks.manifest import ManifestError, load_manifest
from clipbackdoor.config import ExperimentConfig
from clipbackdoor.data import BadRowLog, build_labelled_dataset
from clipbackdoor.evaluation.zeroshot import Attack, ZeroShotEvaluator


def build_evaluator(cfg: ExperimentConfig, image_size: int, bad_rows: BadRowLog) -> ZeroShotEvaluator:
    dataset = build_labelled_dataset(cfg.data.eval, image_size)
    bad_rows.add(dataset.rows.bad)
    attack = None
    if cfg.eval.attack is not None:
        manifest, trigger = load_manifest(cfg.eval.attack)
        if manifest.target not in dataset.classnames:
            raise ManifestError(
                f"{cfg.eval.attack}: target {manifest.target!r} is not among the eval class names "
                f"{dataset.classnames[:10]}{'...' if len(dataset.classnames) > 10 else ''}"
            )
        attack = Attack(trigger, dataset.classnames.index(manifest.target))
    return ZeroShotEvaluator(dataset, cfg.eval.batch_size, cfg.data.num_workers, bad_rows, attack)
