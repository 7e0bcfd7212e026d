"""The attack axis and the clean model: what a study with ``attacks`` or ``clean_model`` adds to one that has
neither.

- The clean model is a pre-training of the base config on the clean ``poison.source`` (no attack, seed + 1000
  unless its overrides say otherwise), run once in ``<study>/pretrain/clean-model``. It is BadCLIP's surrogate
  and, under ``finetune``, the start of every poisoned model.
- Each attack is the whole study (poisoning, pre-trainings, sweeps, seeds, detection) in
  ``<study>/attacks/<attack>``, over its own poisoned data. What they share they share by construction: the
  clean model; and, since which rows are poisoned depends only on ``poison.seed``, the source and the count,
  the same poisoned rows and so the same cleaning set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipbackdoor.resolve import load_config
from clipbackdoor.study.config import CLEAN_MODEL, PretrainSpec, StudyConfig, clean_model_path, stage_overrides

CLEAN_SEED_OFFSET = 1000


def clean_model_study(cfg: StudyConfig) -> StudyConfig:
    """``cfg`` with one pre-training, ``clean-model``: the base config on the poisoning's clean source, no
    attack evaluated (no attack's data exists yet), seed + 1000, the clean model's own overrides last."""
    base = load_config(cfg.base, stage_overrides(cfg))
    assert base.poison is not None
    overrides: dict[str, Any] = {
        "data.train": base.poison.source.model_dump(mode="json"),
        "eval.attack": None,
        "seed": base.seed + CLEAN_SEED_OFFSET,
        **(cfg.clean_model.overrides if cfg.clean_model else {}),
    }
    spec = PretrainSpec(overrides=overrides, clean=False)
    return cfg.model_copy(update={"pretrain": {CLEAN_MODEL: spec}, "finetune": None, "attacks": None, "seeds": None})


def needs_clean_model_run(cfg: StudyConfig) -> bool:
    """Whether the study trains its clean model (it has one, and no checkpoint is given for it)."""
    return cfg.clean_model is not None and cfg.clean_model.checkpoint is None


def attack_study(cfg: StudyConfig, attack: str) -> StudyConfig:
    """The study for one attack: its directory ``<study>/attacks/<attack>``, the attack's overrides over the
    study's, the study's clean model by path (trained once, above), and for a ``badclip`` trigger its patch
    in ``<attack>/trigger/patch.safetensors`` optimised against that clean model."""
    assert cfg.attacks is not None
    spec = cfg.attacks[attack]
    overrides = {**cfg.overrides, **spec.overrides}
    home = cfg.study_dir / "attacks" / attack
    trigger = overrides.get("poison.trigger")
    if isinstance(trigger, dict) and trigger.get("name") == "badclip":
        overrides["poison.trigger"] = {"patch": str(home / "trigger" / "patch.safetensors"), **trigger}
        optimize = overrides.get("poison.optimize") or {}
        if "surrogate" not in optimize:
            if cfg.clean_model is None:
                raise ValueError(f"attacks.{attack}: a badclip trigger needs clean_model (its surrogate)")
            optimize = {**optimize, "surrogate": str(clean_model_path(cfg))}
        overrides["poison.optimize"] = optimize
    clean_model = None
    if cfg.clean_model is not None:
        clean_model = cfg.clean_model.model_copy(update={"checkpoint": str(clean_model_path(cfg))})
    return cfg.model_copy(
        update={
            "name": attack,
            "output_dir": str(Path(cfg.study_dir) / "attacks"),
            "overrides": overrides,
            "attacks": None,
            "clean_model": clean_model,
            "seeds": cfg.seeds if spec.seeds else None,
        }
    )


def attack_studies(cfg: StudyConfig) -> dict[str, StudyConfig]:
    """Every attack's study, in the order the config lists them (none without an attack axis)."""
    return {attack: attack_study(cfg, attack) for attack in cfg.attacks or {}}
