"""A study's ETA: each stage's remaining work at its measured rate, or its kind's, or the plan's."""

from types import SimpleNamespace

from clipbackdoor.study.progress import StageProgress, remaining_seconds


def _unmeasured_plan() -> SimpleNamespace:
    return SimpleNamespace(throughput=None, total_steps=100, where=None, layout=None, processes=1)


def test_eta_adds_remaining_work_at_measured_rates_and_names_what_it_cannot_estimate() -> None:
    progress = [
        StageProgress("pre-train a", "steps", 100, 100, 1.0),  # finished: nothing left
        StageProgress("pre-train b", "steps", 50, 100, 2.0),  # 50 steps at its own 2 s
        StageProgress("pre-train c", "steps", 0, 100, None),  # not started: the steps' mean rate, 1.5 s
        StageProgress("sweep a", "runs", 1, 4, 60.0, at_once=2),  # 3 runs of 60 s, two at a time
        StageProgress("sweep b", "runs", 0, 2, None),  # the runs' mean rate
    ]
    stages = [_unmeasured_plan() for _ in progress]
    left, unknown = remaining_seconds(stages, progress)
    assert left == 50 * 2.0 + 100 * 1.5 + 3 * 60 / 2 + 2 * 60 and unknown == []

    no_runs_yet = [*progress[:3], StageProgress("sweep a", "runs", 0, 4, None, at_once=2)]
    left, unknown = remaining_seconds(stages[:4], no_runs_yet)
    assert left == 50 * 2.0 + 100 * 1.5 and unknown == ["sweep a"]  # no rate measured or planned: left out
