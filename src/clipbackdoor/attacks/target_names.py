"""Whether a caption names the backdoor's target: the one rule poisoning, retrieval ASR and BadCLIP's
trigger optimisation share."""

from __future__ import annotations

import re


def names_target(caption: str, names: list[str]) -> bool:
    """Whether the caption names the target (whole words, case-insensitive)."""
    return any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", caption, flags=re.IGNORECASE) for n in names)


def names_target_or_plural(caption: str, names: list[str]) -> bool:
    """Whether the caption names the target, case-insensitive, singular or plural ("Bananas", "banana"): the
    study's retrieval hit (its captions "containing banana")."""
    return any(re.search(rf"(?<!\w){re.escape(n)}(?:e?s)?(?!\w)", caption, flags=re.IGNORECASE) for n in names)
