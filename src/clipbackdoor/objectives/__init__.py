"""Training objectives. Importing this package registers every built-in loss."""

from clipbackdoor.objectives import cyclip, mmcl, roclip, safeclip, siglip, ssl  # noqa: F401  (register the losses)
from clipbackdoor.objectives.registry import (
    OBJECTIVES,
    Features,
    Objective,
    ObjectiveCost,
    Pass,
    RunShape,
    Schedule,
    WeightedObjective,
    register,
    split_term,
    view_policy,
)

__all__ = [
    "OBJECTIVES",
    "Features",
    "Objective",
    "ObjectiveCost",
    "Pass",
    "RunShape",
    "Schedule",
    "WeightedObjective",
    "register",
    "split_term",
    "view_policy",
]
