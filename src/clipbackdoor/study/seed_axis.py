"""The study's seeds axis: re-run each pre-training, and each selected cleaning setting, under other seeds.

A study's grid runs once, at the base config's seed; its selected cleaned model is the best of many trials,
so its numbers alone do not say how much they move from one training run to the next. For every other seed
this re-runs each poisoned pre-training, then the selected setting (parameters and epoch) of each defense in
``seeds.defenses`` on that seed's poisoned model: a one-point grid sweep under ``<study>/seeds/``, resumable
and on the study's device slots like every other cleaning run. The base seed's runs are the study's own.
``seeds.json`` lists every (pre-training, seed, model) with its run directory and epoch, for the report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from clipbackdoor.report.build import format_params, load_sweep, objective_label
from clipbackdoor.report.seeds import POISONED, SeedRun
from clipbackdoor.resolve import load_config
from clipbackdoor.study.config import StudyConfig, pretrain_overrides, run_name, stage_overrides, trial_workers
from clipbackdoor.study.pretraining import run_pretraining
from clipbackdoor.sweep.config import SweepConfig
from clipbackdoor.sweep.devices import resolve_devices
from clipbackdoor.sweep.scheduling import run_sweeps
from clipbackdoor.sweep.select import Point, best_under
from clipbackdoor.sweep.space import ParamSpec


def base_seed(cfg: StudyConfig) -> int:
    """The seed the study's grid runs at: the base config's (after the study's overrides)."""
    return load_config(cfg.base, stage_overrides(cfg)).seed


def other_seeds(cfg: StudyConfig, base: int) -> list[int]:
    """The seeds the seeds axis re-runs at: its values but the base seed, each once, in order."""
    return [s for s in dict.fromkeys(cfg.seeds.values if cfg.seeds else []) if s != base]


def _setting(best: Point) -> str:
    params = format_params(best.params)
    return f"{params}, epoch {best.epoch}" if params else f"epoch {best.epoch}"


def seed_sweep_home(cfg: StudyConfig, sweep: SweepConfig, seed: int) -> SweepConfig:
    """``sweep`` moved to the poisoned model pre-trained under ``seed``: its name, run and storage (known
    before the selected setting is, so ``plan`` and ``status`` can name it)."""
    tag = Path(sweep.run).name
    return sweep.model_copy(
        update={
            "name": f"{run_name(tag, seed)}--{Path(sweep.defense).stem}",
            "run": str(cfg.study_dir / "pretrain" / run_name(tag, seed)),
            "output_dir": str(cfg.study_dir / "seeds"),
        }
    )


def seed_sweep(cfg: StudyConfig, sweep: SweepConfig, best: Point, seed: int) -> SweepConfig:
    """The selected setting as a one-point grid, cleaning the poisoned model pre-trained under ``seed``."""
    space = {key: ParamSpec(choices=[value]) for key, value in best.params.items()}
    update = {"sampler": "grid", "trials": None, "space": space, "early_stop": None}  # one setting: to its end
    return seed_sweep_home(cfg, sweep, seed).model_copy(update=update)


def run_seeds(cfg: StudyConfig, sweeps: list[SweepConfig], log: Any = print) -> Path:
    """Run whatever the seeds axis still lacks; returns ``<study>/seeds/seeds.json``."""
    assert cfg.seeds is not None
    base = base_seed(cfg)
    others = other_seeds(cfg, base)
    runs: list[SeedRun] = []
    for tag in cfg.seeded_pretrain:
        objective = objective_label(load_config(cfg.base, pretrain_overrides(cfg, tag)).objective)
        runs.append(SeedRun(tag, objective, POISONED, "", base, str(cfg.study_dir / "pretrain" / tag), None))
        for seed in others:
            run_pretraining(cfg, tag, log, seed=seed)
            run_dir = cfg.study_dir / "pretrain" / run_name(tag, seed)
            runs.append(SeedRun(tag, objective, POISONED, "", seed, str(run_dir), None))
    wanted = cfg.seeds.defenses or list(cfg.defenses)
    reruns: list[tuple[SeedRun, SweepConfig]] = []  # the base seed's run, and a one-point sweep per other seed
    for sweep in sweeps:
        defense, tag = Path(sweep.defense).stem, Path(sweep.run).name
        if defense not in wanted or tag not in cfg.seeded_pretrain:
            continue
        result = load_sweep(sweep.sweep_dir)
        best = best_under(result.points, cfg.asr_threshold)
        if best is None:
            log(f"== seeds {sweep.name}: no setting reached ASR <= {cfg.asr_threshold:g} %, nothing to re-run")
            continue
        setting = _setting(best)
        runs.append(SeedRun(tag, result.pretrain, defense, setting, base, str(best.run_dir), best.epoch))
        for seed in others:
            seeded = seed_sweep(cfg, sweep, best, seed)
            log(f"== seeds {seeded.name}: {setting} -> {seeded.sweep_dir}")
            reruns.append((SeedRun(tag, result.pretrain, defense, setting, seed, "", best.epoch), seeded))
    run_sweeps([seeded for _, seeded in reruns], threads=trial_workers(cfg, resolve_devices(cfg.devices)))
    for run, seeded in reruns:
        (run_dir,) = {p.run_dir for p in load_sweep(seeded.sweep_dir).points}
        runs.append(replace(run, run_dir=str(run_dir)))
    index = cfg.study_dir / "seeds" / "seeds.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")
    return index
