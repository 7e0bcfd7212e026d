"""Optuna sweeps over cleaning hyperparameters, and selection of the best cleaned models."""

from clipbackdoor.sweep.config import SweepConfig, SweepSpec, load_sweep_config
from clipbackdoor.sweep.scheduling import run_sweep
from clipbackdoor.sweep.select import Point, best_under, hypervolume, pareto_front, sweep_points
from clipbackdoor.sweep.storage import open_study

__all__ = [
    "Point",
    "SweepConfig",
    "SweepSpec",
    "best_under",
    "hypervolume",
    "load_sweep_config",
    "open_study",
    "pareto_front",
    "run_sweep",
    "sweep_points",
]
