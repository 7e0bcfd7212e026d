"""Training objectives. Importing this package registers every built-in loss."""

from clipbackdoor.objectives import mmcl  # noqa: F401  (registers "mmcl")
from clipbackdoor.objectives.registry import OBJECTIVES, Features, Objective, WeightedObjective, register

__all__ = ["OBJECTIVES", "Features", "Objective", "WeightedObjective", "register"]
