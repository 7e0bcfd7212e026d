"""Configs with their names resolved against the registries: the one way a user's config becomes an experiment.

``config.py`` knows every schema but no component, so that the library can import it without importing the
registries (which import the library). This module sits above the registries and hands them to validation
as a :class:`~clipbackdoor.config.Resolver`: a trigger's, a defense's and a loss's parameters are checked
where the config is read, with errors that name the key and the file, and a defense sets its cleaning
objective and a loss the model settings it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.attacks import build_trigger
from clipbackdoor.config import ExperimentConfig, read_config_tree, validate_as
from clipbackdoor.defenses import build_defense
from clipbackdoor.models import ClipBundle, create_model, resolve_device
from clipbackdoor.objectives import OBJECTIVES, split_term, view_policy


class RegistryResolver:
    """:class:`~clipbackdoor.config.Resolver` over the trigger, defense and objective registries."""

    def trigger(self, spec: dict[str, Any]) -> dict[str, Any]:
        return build_trigger(spec, where="trigger").model_dump(mode="json")

    def defense(self, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        defense = build_defense(spec)
        return defense.model_dump(mode="json"), defense.objective()

    def objective_term(self, name: str, spec: float | dict[str, Any]) -> None:
        split_term(name, spec)

    def model_defaults(self, name: str) -> dict[str, Any]:
        return OBJECTIVES[name].model_defaults

    def view_policy(self, terms: dict[str, Any]) -> dict[str, Any]:
        policy = view_policy(terms)
        return {"image": policy.image, "fixed_captions": policy.fixed_captions}


RESOLVER = RegistryResolver()


def validate_tree(tree: dict[str, Any], overrides: list[str], origin: str) -> ExperimentConfig:
    """A raw experiment tree with overrides applied, checked for shape and names; errors name key and origin."""
    return validate_as(ExperimentConfig, tree, overrides, origin, RESOLVER)


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a config from a YAML path or a built-in name (``None``: the defaults), apply overrides, validate."""
    tree, origin = read_config_tree(source)
    return validate_tree(tree, list(overrides or []), origin)


def load_checkpoint_model(
    checkpoint: str | Path, config: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[ExperimentConfig, ClipBundle, Any, Path, dict[str, str]]:
    """(config, model bundle on its device, the device, the weights file, their metadata) of a checkpoint or
    a run directory (its latest checkpoint); the config is the run's own unless one is given."""
    weights = ckpt.resolve_weights(str(checkpoint))
    if config is None:  # the run's own config, when the checkpoint sits in a run directory
        candidate = weights.parent.parent / "config.yaml"
        config = candidate if candidate.is_file() else "demo"
    cfg = load_config(config, [*(overrides or []), f"model.checkpoint={weights}"])
    meta = ckpt.checkpoint_metadata(weights)
    if "image_size" in meta and cfg.model.image_size is None:
        cfg.model.image_size = int(meta["image_size"])
    bundle = create_model(cfg.model)
    device = resolve_device(cfg.train.device)
    bundle.model.to(device)
    return cfg, bundle, device, weights, meta
