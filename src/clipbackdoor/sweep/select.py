"""Model selection on the CA–ASR plane: the study's rule, the Pareto set and its hypervolume.

Every evaluated (trial, epoch) of a sweep is a candidate cleaned model. The study's rule picks the one
with the highest clean accuracy among those whose ASR is at most 5 %; the Pareto set (maximise CA,
minimise ASR) shows what every other threshold would pick.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState


@dataclass(frozen=True)
class Point:
    """One evaluated model: a trial's epoch (epoch 0 of any trial is the poisoned model itself)."""

    ca: float
    asr: float
    epoch: int = 0
    trial: int | None = None
    ra: float | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    run_dir: str | None = None


def sweep_points(study: optuna.Study) -> tuple[list[Point], Point | None]:
    """The cleaned points (epochs >= 1) of every complete or early-stopped trial (the epochs it ran), and the
    poisoned model's point."""
    points, poisoned = [], None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "reused_from" in t.user_attrs:  # the same points as an earlier trial with these parameters
            continue
        for p in t.user_attrs.get("points", []):
            if p["asr"] is None:
                continue
            run_dir = t.user_attrs.get("run_dir")
            point = Point(p["ca"], p["asr"], p["epoch"], t.number, p.get("ra"), dict(t.params), run_dir)
            if p["epoch"] == 0:
                poisoned = poisoned or point
            else:
                points.append(point)
    return points, poisoned


def best_under(points: Iterable[Point], asr_threshold: float = 5.0) -> Point | None:
    """The study's rule: the highest CA among points with ASR <= threshold (ties: lower ASR, earlier)."""
    eligible = [p for p in points if p.asr <= asr_threshold]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (p.ca, -p.asr, -(p.trial or 0), -p.epoch))


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """Points no other point beats on both CA (higher) and ASR (lower), by increasing ASR."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.asr, -p.ca)):
        if not front or p.ca > front[-1].ca:
            front.append(p)
    return front


def hypervolume(points: Sequence[Point], ca_floor: float = 0.0, asr_ceiling: float = 100.0) -> float:
    """Share of the box CA in [floor, 100] x ASR in [0, ceiling] that the points dominate (0..1)."""
    front = [p for p in pareto_front(points) if p.ca > ca_floor and p.asr < asr_ceiling]
    area = 0.0
    rights = [p.asr for p in front[1:]] + [asr_ceiling]  # each point is the best until the next one's ASR
    for here, right in zip(front, rights[: len(front)], strict=True):
        area += (right - here.asr) * (here.ca - ca_floor)
    return area / ((100.0 - ca_floor) * asr_ceiling)
