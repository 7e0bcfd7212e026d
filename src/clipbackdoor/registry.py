"""The mechanism behind the registries of triggers, objectives and defenses: name -> class, filled by a
class decorator in each method's own file, and (for pydantic-configured kinds) built from a config mapping
with errors that name the config key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T")


class Registry(dict[str, type[T]], Generic[T]):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make a class available to configs under ``name``."""

        def add(cls: type[T]) -> type[T]:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self[name] = cls
            return cls

        return add


def build_from_spec(registry: Registry[Any], spec: dict[str, Any], where: str, error: type[ValueError]) -> BaseModel:
    """Validate ``spec`` (``{name: ..., **parameters}``) against the named pydantic class."""
    name = spec.get("name")
    if name not in registry:
        raise error(f"{where}.name: unknown {registry.kind} {name!r}; known: {sorted(registry)}")
    try:
        return registry[name].model_validate(spec)
    except ValidationError as err:
        msgs = [f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise error(f"invalid {registry.kind}: " + "; ".join(msgs)) from None
