"""Where a sweep's trials live: an Optuna storage, and the sweep's study in it.

Every worker of a sweep, in this process or on other machines, opens the same study, so the storage is the
only place they meet: a journal file (the default, safe for several processes on one disk) or a PostgreSQL
URL for many machines. A study remembers what its results depend on (its identity): a worker that would
join or resume it with other values is refused, so one sweep never mixes trials of two settings.

Optuna keeps a study's storage and a trial's id in it private; :func:`trial_in_storage` is the one place
that reaches for them.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from clipbackdoor.config import ConfigError
from clipbackdoor.sweep.config import SweepConfig
from clipbackdoor.sweep.space import grid_space

DIRECTIONS = ["maximize", "minimize"]  # clean accuracy, attack success rate
METRIC_NAMES = ["CA", "ASR"]  # the objectives' names in optuna-dashboard
VALUE_NAME = ["selection value"]  # the one objective of a sweep with early stopping (sweep/stopping.py)
IDENTITY_BEFORE = {"early_stop": "null"}  # what a sweep stored before an identity key existed had


def open_storage(url: str) -> BaseStorage:
    """``journal:<path>`` (a local journal file) or any SQLAlchemy URL (``postgresql://...``)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    import sqlalchemy.exc  # only a database storage needs SQLAlchemy

    for attempt in range(4):  # workers started together race to create the schema: the losers retry
        try:
            return RDBStorage(url)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.5 * (attempt + 1))
    return RDBStorage(url)


def make_sampler(cfg: SweepConfig, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """TPE and NSGA-II are seeded per worker process, so that two processes do not draw the same first points.

    The grid sampler is not: its seed shuffles the grid, and grid ids must mean the same point in every
    worker (the first pass hands out grid id = trial number, so workers never pick the same point).
    """
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(cfg.space), seed=cfg.seed)
    seed = cfg.seed + 1000 * worker_index
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=seed)
    return optuna.samplers.TPESampler(
        n_startup_trials=cfg.startup_trials, multivariate=True, constant_liar=True, seed=seed
    )  # constant_liar: workers running at once do not all propose the same point


def _identity(cfg: SweepConfig) -> dict[str, str]:
    """What a sweep's stored results depend on: resuming or joining it with other values is refused."""
    space = {name: spec.model_dump(exclude_defaults=True) for name, spec in cfg.space.items()}
    return {
        "run": cfg.run,
        "defense": cfg.defense,
        "sampler": cfg.sampler,
        "space": json.dumps(space, sort_keys=True),
        "overrides": json.dumps(cfg.overrides, sort_keys=True),
        "early_stop": json.dumps(cfg.early_stop.model_dump() if cfg.early_stop else None, sort_keys=True),
    }


def open_study(cfg: SweepConfig, worker_index: int = 0) -> optuna.Study:
    """Create the sweep's study, or load it if it exists and was made with the same identity."""
    stopping = cfg.early_stop is not None
    study = optuna.create_study(
        study_name=cfg.name,
        storage=open_storage(cfg.storage_url),
        sampler=make_sampler(cfg, worker_index),
        pruner=cfg.early_stop.make_pruner() if cfg.early_stop else optuna.pruners.NopPruner(),
        directions=["maximize"] if stopping else DIRECTIONS,
        load_if_exists=True,
    )
    identity, stored = _identity(cfg), study.user_attrs
    for key, value in identity.items():
        was = stored.get(key, IDENTITY_BEFORE.get(key, value) if "run" in stored else value)
        if was != value:
            raise ConfigError(
                f"sweep '{cfg.name}' in {cfg.storage_url} was made with {key}={was!r}, not {value!r}: give the "
                "changed sweep a new name"
            )
    if len(study.directions) != (1 if stopping else 2):  # create_study(load_if_exists) keeps the stored ones
        raise ConfigError(f"sweep '{cfg.name}' in {cfg.storage_url} has {len(study.directions)} objective(s); "
                          "early_stop makes it 1: give the changed sweep a new name")  # fmt: skip
    for key, value in identity.items():
        study.set_user_attr(key, value)
    names = VALUE_NAME if stopping else METRIC_NAMES
    if study.metric_names != names:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def trial_in_storage(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> tuple[BaseStorage, int]:
    """The study's storage and the trial's id in it, for what Optuna's public API does not offer: writing to a
    trial from outside its objective (a heartbeat thread; another worker's lost trial, failed) and reading a
    trial back as stored now. Optuna keeps both private (``Study._storage``, ``_trial_id``)."""
    return study._storage, trial._trial_id


def read_back(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as stored now: another worker may have failed it since it was read (it presumed it lost)."""
    storage, trial_id = trial_in_storage(study, trial)
    return storage.get_trial(trial_id)
