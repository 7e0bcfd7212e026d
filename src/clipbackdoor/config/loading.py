"""Reading configs: YAML files or built-in names, dotted command-line overrides, validation whose errors name
the key and the file, and saving the resolved config into a run directory."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from clipbackdoor.config.base import ConfigError
from clipbackdoor.config.experiment import Resolver

M = TypeVar("M", bound=BaseModel)


class ConfigLoader(yaml.SafeLoader):
    """YAML 1.1's safe loader, but reading ``5e-6`` and ``1e3`` as numbers, as YAML 1.2 and JSON do: YAML 1.1 wants
    a dot and a signed exponent (``5.0e-6``), so a learning rate typed or serialised the short way would arrive as
    a string where no schema coerces it (an objective's parameters)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader subclass: no Python objects


# -------------------------------------------------------------------------------------------- loading
def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``a.b.c`` sets tree[a][b][c]; ``\\.`` is a literal dot (``space.train\\.lr.grid``: a sweep parameter)."""
    keys = [k.replace("\\.", ".") for k in re.split(r"(?<!\\)\.", dotted)]
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{'.'.join(keys[: i + 1])}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``true``, ``[1, 2]``).

    YAML 1.1 reads ``1e-4`` as a string; pydantic's numeric fields accept it, so no special case is needed.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        try:
            value = load_yaml(raw) if raw.strip() else raw
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': value is not valid YAML ({err})") from err
        _set_dotted(tree, key.strip(), value)
    return tree


SOURCE_TAGS = (
    "fashion-mnist",
    "csv",
    "imagenet",
    "torchvision",
    "webdataset",
)  # pydantic puts the union tag in error paths


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in SOURCE_TAGS))
        lines.append(f"  {loc or '<root>'}: {e['msg']}")
    return "\n".join(lines)


def builtin_config_path(name: str) -> Path | None:
    """The packaged config called ``name`` (``demo`` -> configs/demo.yaml, ``defenses/par``), if there is one."""
    candidate = resources.files("clipbackdoor") / "configs" / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(tree).__name__}")
    return tree


def merge_trees(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in: nested mappings merge, anything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge_trees(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def validate_as(
    model: type[M], tree: dict[str, Any], overrides: list[str], origin: str, resolver: Resolver | None = None
) -> M:
    """Apply overrides to a raw config tree and validate it as ``model``; errors name the key and the file.
    Without a ``resolver`` only the shape is checked: component names are taken as given (a saved run's
    config, already resolved when it was written)."""
    tree = apply_overrides(tree, list(overrides))
    try:
        return model.model_validate(tree, context={"resolver": resolver})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def resolve_yaml(source: str | Path) -> Path:
    """A YAML path as given, or the built-in config of that name (``demo``, ``study-fmnist``)."""
    path = Path(source)
    if path.is_file():
        return path
    builtin = builtin_config_path(str(source))
    if builtin is None:
        raise ConfigError(f"config '{source}' is neither a file nor a built-in config")
    return builtin


def read_config_tree(source: str | Path | None) -> tuple[dict[str, Any], str]:
    """The raw tree of a YAML path or a built-in name (empty for ``None``: the defaults), and its origin.

    Relative data paths inside the file stay relative to the working directory, as typed by the user.
    """
    if source is None:
        return {}, "defaults"
    path = resolve_yaml(source)
    return read_yaml(path), str(path)


def save_config(cfg: BaseModel, path: Path) -> None:
    """Write the resolved config so a run directory says exactly what produced it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
