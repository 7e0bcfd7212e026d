"""Cleaning defenses. Importing this package registers every built-in defense."""

from clipbackdoor.defenses import cleanclip, deep_clustering, par, shrink_perturb  # noqa: F401  (registration)
from clipbackdoor.defenses.registry import DEFENSES, Defense, DefenseError, build_defense, register

__all__ = ["DEFENSES", "Defense", "DefenseError", "build_defense", "register"]
