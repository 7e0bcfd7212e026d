"""clipbackdoor: backdoor attacks, pre-training objectives and cleaning defenses for CLIP-style models."""

__version__ = "0.1.0"
