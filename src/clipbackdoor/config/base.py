"""What every config schema shares: strict models, the error that names a key, caption templates, class specs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_placeholder(template: str) -> str:
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' for the class name")
    return template


Template = Annotated[str, AfterValidator(_one_placeholder)]


def class_index(
    classnames: Sequence[str], spec: str | int, key: str, remedy: str = "give the class index instead"
) -> int:
    """The index of the class ``spec`` names in ``classnames``: an index as given, or a name that occurs once.

    ``list.index`` would silently take the first of a repeated name, and ImageNet repeats two (open_clip's
    list: 'missile' at 657 and 744, 'sunglasses' at 836 and 837), so an ambiguous name is refused with its
    indices and ``remedy``. ``key`` names the setting that gave ``spec``.
    """
    if isinstance(spec, int):
        if not 0 <= spec < len(classnames):
            raise ValueError(f"{key}: class index {spec} outside [0, {len(classnames)})")
        return spec
    matches = [i for i, name in enumerate(classnames) if name == spec]
    if not matches:
        raise ValueError(f"{key}: {spec!r} is not among the class names")
    if len(matches) > 1:
        raise ValueError(f"{key}: class name {spec!r} is ambiguous, it is class {matches}; {remedy}")
    return matches[0]
