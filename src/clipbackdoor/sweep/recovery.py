"""Lost trials: how a sweep notices a worker that died mid-trial, retries its trial, and never runs it twice.

A worker proves it is alive by a heartbeat (a trial user attribute) while its trial runs; a worker that
starts later marks a trial whose heartbeat went stale as failed and queues a retry with the same parameters,
which resumes the lost trial's run directory from its last checkpoint; a trial lost more than MAX_LOST
times is recorded as failed. Only the worker whose RUNNING -> FAIL transition succeeds queues the retry, and
a run directory is held under an exclusive file lock while a trial runs in it, so no two workers ever run
the same trial: a retry of a trial that was only presumed lost (its worker paused, its heartbeat failed)
waits for the lock, then finds the run finished. An interrupted worker (Ctrl-C, SIGTERM) queues its own
retries on the way out, however often. A sweep is done only when no trial is running anywhere, so a sweep
restarted right after a crash waits for its lost trials.
"""

from __future__ import annotations

import fcntl
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from clipbackdoor.sweep.storage import trial_in_storage

STALE_AFTER = 3  # heartbeats missed before a running trial counts as lost
MAX_LOST = 3  # a trial whose worker was lost this often is recorded as failed (it may be what kills them)


class TrialFailed(RuntimeError):
    """The trial's own run failed (non-zero exit): recorded as its failure, not retried."""


class TakenOver(RuntimeError):
    """Another worker presumed this trial lost and queued its retry, which records the results."""


def requeue_lost_trials(study: optuna.Study, heartbeat_s: float) -> list[int]:
    """Fail running trials whose worker stopped beating and queue their retries; returns their numbers.

    A trial lost more than MAX_LOST times is recorded as failed ("lost its worker N times") instead.
    """
    now, lost = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        last = max(t.user_attrs.get("heartbeat", started), started)  # a retry inherits its original's heartbeat
        if now - last > STALE_AFTER * heartbeat_s and _fail_and_retry(study, t):
            lost.append(t.number)
    return lost


def _fail_and_retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """RUNNING -> FAIL, then queue a retry; only the caller whose transition succeeds queues it."""
    storage, trial_id = trial_in_storage(study, trial)
    lost = trial.user_attrs.get("lost", 0) + 1
    try:
        storage.set_trial_user_attr(trial_id, "lost", lost)  # the retry inherits the count
        if lost > MAX_LOST:
            storage.set_trial_user_attr(trial_id, "failure", f"lost its worker {lost} times")
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if lost <= MAX_LOST:
        queue_retry(study, storage.get_trial(trial_id))
    return True


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """The same parameters again, WAITING for the next worker; the retry keeps the trial's attributes (its
    run directory, so it resumes that run) and system attributes (a grid trial keeps its grid point)."""
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=trial.system_attrs,
        )
    )


@contextmanager
def exclusive(lock_path: Path, stopping: threading.Event) -> Iterator[None]:
    """Hold a run directory's lock. Another holder is a trial presumed lost but still running: wait for it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        for waited in itertools.count():
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited == 0:
                    print(f"{lock_path}: another worker still runs this trial; waiting for it", flush=True)
                if stopping.wait(1.0):
                    raise TrialFailed(f"{lock_path}: interrupted while waiting for the lock") from None
        yield


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, every: float) -> Iterator[None]:
    """Write the trial's heartbeat every ``every`` seconds, from a thread of its own, while the block runs."""
    storage, trial_id = trial_in_storage(study, trial)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # presumed lost and taken over by another worker: nothing left to prove
            except Exception as err:  # a storage hiccup must not silence the trial: beat again next time
                print(f"trial {trial.number}: heartbeat not written ({err!r}); retrying", flush=True)

    trial.set_user_attr("heartbeat", time.time())
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
