"""The whole study in one resumable command: (clean model) -> poison -> pre-train per objective -> sweep each
defense -> (seeds axis) -> (detect, filter, pre-train again) -> report; with an attack axis, everything after
the clean model once per attack, then the attack report.

Every stage writes its own files under ``<output_dir>/<name>/`` and picks up where it stopped: poisoning
reuses an identical poisoned set, pre-training resumes from its last checkpoint (a finished run is only
read back), sweeps resume from their Optuna storage, and the report is rebuilt from what is there.

Each pre-training is a ``clipbackdoor pretrain`` subprocess under ``pretrain_launcher`` (e.g. an 8-GPU
torchrun), its output in ``pretrain/<tag>.log``; each cleaning trial one under ``clean_launcher``, on its
worker's device slot (``devices``, ``devices_per_trial``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipbackdoor.attacks.poison import write_poisoned_dataset
from clipbackdoor.config import ConfigError, save_config
from clipbackdoor.report.attacks import AttackResults, build_attack_report
from clipbackdoor.report.build import build_report
from clipbackdoor.resolve import load_config
from clipbackdoor.study.attack_axis import attack_studies, clean_model_study, needs_clean_model_run
from clipbackdoor.study.config import (
    CLEAN_MODEL,
    StudyConfig,
    only_pretrainings,
    stage_overrides,
    sweep_configs,
    trial_workers,
)
from clipbackdoor.study.filtering import run_filtering
from clipbackdoor.study.plan import format_plan, plan_study
from clipbackdoor.study.pretraining import run_pretraining
from clipbackdoor.study.progress import ProgressWriter
from clipbackdoor.study.seed_axis import run_seeds
from clipbackdoor.sweep.devices import device_slots, resolve_devices
from clipbackdoor.sweep.scheduling import run_sweeps


def run_study(cfg: StudyConfig, command: str | None = None, log: Any = print, only: list[str] | None = None) -> Path:
    """Run every stage that is not finished yet, writing ``progress.json`` as it goes; returns the report's
    Markdown file. With ``only``, just the poisoning and those pre-trainings (and their seeds); the study's
    directory still holds the whole study's config, for the full run and ``report`` later."""
    save_config(cfg, cfg.study_dir / "study.yaml")
    cfg = only_pretrainings(cfg, only) if only else cfg
    devices = resolve_devices(cfg.devices)
    device_slots(devices, cfg.devices_per_trial, trial_workers(cfg, devices))  # fail now, not after days
    stages = plan_study(cfg)
    log(format_plan(stages))
    with ProgressWriter(cfg, stages, log) as progress:
        if needs_clean_model_run(cfg):
            run_pretraining(clean_model_study(cfg), CLEAN_MODEL, progress.log_stage)
        if not cfg.attacks:
            return _run_stages(cfg, command, progress.log_stage)
        results = []
        for attack, study in attack_studies(cfg).items():
            progress.log_stage(f"=== attack {attack} -> {study.study_dir}")
            save_config(study, study.study_dir / "study.yaml")  # `report` rebuilds its own report from it
            _run_stages(study, command, progress.log_stage)
            results.append(attack_results(attack, study))
        report = build_attack_report(
            cfg.study_dir / "report", results, cfg.asr_threshold, f"Study {cfg.name}: attacks", command
        )
        progress.log_stage(f"== attack report -> {report} (and report.html)")
        return report


def attack_results(attack: str, study: StudyConfig) -> AttackResults:
    """Where one attack's study wrote what the attack report reads."""
    return AttackResults(
        attack=attack,
        pretrained=[study.study_dir / "pretrain" / tag for tag in study.pretrain],
        sweeps=[s.sweep_dir for s in sweep_configs(study)],
        seeds=study.study_dir / "seeds" / "seeds.json" if study.seeds else None,
        filtering=study.study_dir / "filter" / "filter.json" if study.filter else None,
        patch_record=study.study_dir / "trigger" / "patch.json",
    )


def _run_stages(cfg: StudyConfig, command: str | None, log: Any) -> Path:
    base = stage_overrides(cfg)
    poison = load_config(cfg.base, base).poison
    if poison is None:
        raise ConfigError(f"study {cfg.name}: its base config '{cfg.base}' has no poison section")
    log(f"== poisoning -> {poison.output}")
    write_poisoned_dataset(poison)
    for tag in cfg.pretrain:
        last = run_pretraining(cfg, tag, log)
        log(f"   CA {last['eval/clean_top1']:.2f} %, ASR {last['eval/asr_top1']:.2f} % after epoch {last['epoch']}")
    sweeps = sweep_configs(cfg)
    for sweep in sweeps:
        log(f"== sweep {sweep.name}: {sweep.defense}, {sweep.sampler} sampler -> {sweep.sweep_dir}")
    workers = trial_workers(cfg, resolve_devices(cfg.devices))
    run_sweeps(sweeps, threads=workers)  # on the study's slots together: none idles at a sweep's end
    seeds = run_seeds(cfg, sweeps, log) if cfg.seeds else None
    filtering = run_filtering(cfg, log) if cfg.filter else None
    report = build_report(
        [s.sweep_dir for s in sweeps],
        cfg.study_dir / "report",
        title=f"Study {cfg.name}",
        asr_threshold=cfg.asr_threshold,
        fmt=cfg.figure_format,
        command=command,
        seeds=seeds,
        filtering=filtering,
        pretrained=[cfg.study_dir / "pretrain" / tag for tag in cfg.pretrain],
    )
    log(f"== report -> {report} (and report.html)")
    return report
