"""Evaluation: zero-shot accuracy (and, with the attacks issue, attack success and robust accuracy)."""

from clipbackdoor.evaluation.zeroshot import ZeroShotEvaluator, class_embeddings, topk_correct

__all__ = ["ZeroShotEvaluator", "class_embeddings", "topk_correct"]
