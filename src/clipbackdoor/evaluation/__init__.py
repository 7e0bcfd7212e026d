"""Evaluation: zero-shot clean accuracy, attack success rate and robust accuracy, in one pass."""

from clipbackdoor.evaluation.build import build_evaluator
from clipbackdoor.evaluation.zeroshot import (
    Attack,
    BackdoorTally,
    ZeroShotEvaluator,
    class_embeddings,
    topk_correct,
)

__all__ = ["Attack", "BackdoorTally", "ZeroShotEvaluator", "build_evaluator", "class_embeddings", "topk_correct"]
