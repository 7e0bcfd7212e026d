"""The defense registry. A defense is a configuration of the one training loop plus, if it needs them,
hooks (``hooks.py``): it chooses the cleaning objective and may change the model before training,
work at each epoch start, or add loss terms. Each defense is one file; its paper defaults ship as
``configs/defenses/<name>.yaml``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from clipbackdoor.hooks import Hook
from clipbackdoor.models import ClipBundle
from clipbackdoor.registry import Registry, build_from_spec


class Defense(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    mmcl: float = Field(1.0, ge=0, description="weight of the CLIP loss while cleaning")
    ssl: float = Field(1.0, ge=0, description="weight of the in-modal self-supervised loss while cleaning")

    def objective(self) -> dict[str, Any]:
        """The loss terms of the cleaning run (the config's ``objective`` is replaced by these)."""
        terms = {k: w for k, w in (("mmcl", self.mmcl), ("ssl", self.ssl)) if w > 0}
        if not terms:
            raise ValueError(f"defense {self.name}: all loss weights are 0")
        return terms

    def hooks(self, bundle: ClipBundle) -> list[Hook]:
        """The loop hooks this defense needs, built for the model being cleaned."""
        return []


DEFENSES: Registry[Defense] = Registry("defense")
register = DEFENSES.register


class DefenseError(ValueError):
    """Invalid defense parameters; the message names the key."""


def build_defense(spec: dict[str, Any], where: str = "defense") -> Defense:
    """A defense from its config mapping, e.g. ``{name: shrink-perturb, shrink: 0.9}``."""
    return build_from_spec(DEFENSES, spec, where, DefenseError)
