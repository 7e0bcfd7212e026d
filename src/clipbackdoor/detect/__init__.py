"""Finding the poisoned pairs in a dataset from a model's own embeddings (``clipbackdoor detect``)."""

from clipbackdoor.detect.run import DETECTORS, DetectSpec, detect, detection_metrics

__all__ = ["DETECTORS", "DetectSpec", "detect", "detection_metrics"]
