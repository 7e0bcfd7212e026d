"""The config of a cleaning run, assembled from the poisoned run, the defense's defaults and overrides.

Cleaning fine-tunes the poisoned run's last checkpoint with the same model, evaluation set and attack
manifest, on the cleaning set the poisoning step wrote (``cleaning.csv`` next to the manifest), with the
defense's objective and recipe. The optimizer and schedule start fresh (the reference code loaded the
pre-training optimizer, and with it the old weight decay).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.attacks.manifest import load_manifest
from clipbackdoor.config import ConfigError, ExperimentConfig, builtin_config_path, merge_trees, read_yaml
from clipbackdoor.resolve import validate_tree


def defense_recipe(defense: str) -> tuple[dict[str, Any], str]:
    """The defaults of a built-in defense (``cleanclip``) or of a YAML file, and where they came from."""
    path = Path(defense)
    if not path.is_file():
        found = builtin_config_path(f"defenses/{defense}")
        if found is None:
            raise ConfigError(f"defense '{defense}' is neither a YAML file nor a built-in (configs/defenses/)")
        path = found
    return read_yaml(path), str(path)


def with_recipe(tree: dict[str, Any], defense: str) -> tuple[dict[str, Any], str]:
    """A pre-training config tree turned into its cleaning tree: the defense's recipe merged over it (poison and
    defense sections dropped); also where the recipe came from. The pre-training's micro-batch goes too: it
    belongs to its batch, and cleaning has its own (one forward pass of the recipe's batch, unless set)."""
    recipe, origin = defense_recipe(defense)
    tree = {k: v for k, v in tree.items() if k not in ("poison", "defense")}
    tree["train"] = {k: v for k, v in tree.get("train", {}).items() if k != "micro_batch"}
    return merge_trees(tree, recipe), origin


def cleaning_config(
    poisoned_run: str | Path, defense: str, overrides: list[str], name: str | None = None
) -> ExperimentConfig:
    run = Path(poisoned_run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run}: not a run directory (no config.yaml)")
    tree = read_yaml(run / "config.yaml")
    weights = ckpt.latest_checkpoint(run)["weights"]
    tree, origin = with_recipe(tree, defense)
    tree["name"] = name or f"{tree.get('name', run.name)}-{Path(defense).stem}"  # recipe name: heavy-wd, par, ...
    tree["model"] = {**tree.get("model", {}), "checkpoint": str(weights)}
    attack = tree.get("eval", {}).get("attack")
    cleaning_set = None
    if attack:
        manifest, _ = load_manifest(attack)
        folder = Path(attack) if Path(attack).is_dir() else Path(attack).parent
        if "cleaning" in manifest.files:
            cleaning_set = folder / manifest.files["cleaning"]
    if cleaning_set is not None:
        tree.setdefault("data", {})["train"] = {"source": "csv", "path": str(cleaning_set)}
    elif not any(o.startswith("data.train") for o in overrides):
        raise ConfigError(f"{run}: its poison manifest names no cleaning set; give one with data.train=...")
    return validate_tree(tree, overrides, f"{run}/config.yaml + {origin}")
