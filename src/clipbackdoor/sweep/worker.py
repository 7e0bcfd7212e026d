"""A sweep's worker: asks Optuna for parameters, runs each trial's cleaning as a subprocess and records its points.

A trial is a subprocess (``python -m clipbackdoor clean ...``, or under a launcher such as torchrun), so a
crashing or diverging trial cannot take the worker down, and a trial can itself be a multi-GPU job. With
early stopping the worker watches the trial's metrics.jsonl and terminates the process when the sweep's
pruner says so (sweep/stopping.py). While a trial runs, its heartbeat and its run directory's lock keep
other workers from taking it over (sweep/recovery.py).
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from clipbackdoor.config import save_config
from clipbackdoor.resolve import load_config
from clipbackdoor.sweep.config import SweepConfig
from clipbackdoor.sweep.devices import Slot, slot_env
from clipbackdoor.sweep.launch import cli_command, die_with_parent
from clipbackdoor.sweep.recovery import (
    MAX_LOST,
    TakenOver,
    TrialFailed,
    exclusive,
    heartbeat,
    queue_retry,
    requeue_lost_trials,
)
from clipbackdoor.sweep.space import as_overrides
from clipbackdoor.sweep.stopping import stop_after_epoch, value_so_far
from clipbackdoor.sweep.storage import open_study, read_back
from clipbackdoor.sweep.trials import (
    budget,
    completed_with,
    counts_toward_budget,
    record_points,
    record_reuse,
    sweep_done,
    trial_points,
)

POLL_S = 1.0  # how often a worker reads a running trial's metrics.jsonl when it may stop it
OTHERS_POLL_S = 5.0  # how often a worker whose sweep is done looks again at trials running in other processes


class Worker:
    """Runs trials of one sweep until its budget is met, on the device slots of the threads that call
    :meth:`run_trials` (``threads`` of them share the machine's CPUs)."""

    def __init__(self, cfg: SweepConfig, threads: int = 1, worker_index: int = 0):
        self.cfg, self.threads = cfg, threads
        self.study = open_study(cfg, worker_index)
        self.stopping = threading.Event()
        self.children: set[subprocess.Popen] = set()
        self.taken_over: set[int] = set()  # numbers of trials another worker presumed lost while they ran here
        self.lock = threading.Lock()
        # trials of this process told to the storage: a thread waiting for the sweep's last trials wakes at once
        # when one ran here, instead of at its next look (other processes' trials are only seen by looking)
        self.told = threading.Condition()
        self.told_count = 0

    def prepare(self) -> None:
        """Write sweep.yaml and queue the retries of trials whose worker was lost."""
        self.cfg.sweep_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.cfg.sweep_dir / "sweep.yaml")
        lost = requeue_lost_trials(self.study, self.cfg.heartbeat_s)
        if lost:
            print(
                f"[sweep {self.cfg.name}] trials {lost} lost their worker: retried (at most {MAX_LOST} times)",
                flush=True,
            )

    def terminate(self) -> None:
        """Stop every trial this worker runs; each then queues its retry."""
        self.stopping.set()
        with self.lock:
            for child in self.children:
                child.terminate()
        self._wake()

    def _wake(self) -> None:
        with self.told:
            self.told_count += 1
            self.told.notify_all()

    def _wait_for_running_trials(self, seen: int) -> None:
        """Until a trial of this process is told after ``seen`` was read, or stopping, or the next look."""
        with self.told:
            self.told.wait_for(lambda: self.told_count != seen, timeout=min(self.cfg.heartbeat_s, OTHERS_POLL_S))

    def run_trials(self, slot: Slot = (), wait: bool = True) -> None:
        """One worker thread: this sweep's trials, one after another, on the thread's device slot, until none
        is left to start; with ``wait``, also until no trial of the sweep runs anywhere (or is found lost)."""
        while not self.stopping.is_set():
            seen = self.told_count  # read before looking: a trial told between the look and the wait wakes it
            requeue_lost_trials(self.study, self.cfg.heartbeat_s)
            if sweep_done(self.study, self.cfg):
                if not wait or not self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    return
                self._wait_for_running_trials(seen)  # until they finish or are found lost
                continue
            started: list[optuna.Trial] = []
            try:  # optimize, not ask/tell: the grid sampler stops the study from inside its loop
                objective = functools.partial(self._objective, started=started, slot=slot)
                self.study.optimize(objective, n_trials=1, catch=(TrialFailed,))
            except ValueError:  # Optuna cannot tell a trial another worker already failed: that one is fine
                if not any(trial.number in self.taken_over for trial in started):
                    raise
            finally:
                try:
                    for trial in started:  # an interrupted trial resumes next time
                        if trial.number in self.taken_over:
                            continue
                        stored = read_back(self.study, trial)
                        if stored.state == TrialState.FAIL and "failure" not in stored.user_attrs:
                            queue_retry(self.study, stored)
                finally:
                    self._wake()

    def _objective(
        self, trial: optuna.Trial, started: list[optuna.Trial], slot: Slot = ()
    ) -> float | tuple[float, float]:
        started.append(trial)
        if self._budget_met_before(trial):
            raise optuna.TrialPruned("the budget was met by earlier trials")
        params = {name: spec.suggest(trial, name) for name, spec in self.cfg.space.items()}
        earlier = completed_with(self.study, params)
        if earlier is not None:  # a discrete space's sampler proposed a point already run: no second run
            record_reuse(trial, earlier)
            if earlier.state == TrialState.PRUNED:
                raise optuna.TrialPruned(f"as trial {earlier.number}: stopped early")
            return earlier.values[0] if self.cfg.early_stop else tuple(earlier.values)
        try:
            points = self._run_trial(trial, params, slot)
        except TakenOver as err:
            self.taken_over.add(trial.number)
            print(f"[sweep {self.cfg.name}] trial {trial.number}: {err}", flush=True)
            raise
        except TrialFailed as err:
            if not self.stopping.is_set():  # the trial's own failure; an interrupted one is retried
                trial.set_user_attr("failure", str(err))
                print(f"[sweep {self.cfg.name}] trial {trial.number} failed: {err}", flush=True)
            raise
        last = points[-1]
        stopped = f" (stopped after epoch {last['epoch']})" if "stopped_at" in trial.user_attrs else ""
        print(
            f"[sweep {self.cfg.name}] trial {trial.number} {params}: CA {last['ca']:.2f} ASR {last['asr']:.2f}"
            + stopped,
            flush=True,
        )
        if stopped:
            raise optuna.TrialPruned(f"stopped after epoch {last['epoch']}")
        if self.cfg.early_stop:
            return value_so_far(points, self.cfg.asr_threshold)
        return last["ca"], last["asr"]

    def _budget_met_before(self, trial: optuna.Trial) -> bool:
        """Workers check the budget and then create a trial, so several may pass the check for the last
        run; only the lowest-numbered ones run, the rest are pruned (pruned trials do not count). A grid too:
        with more workers than points left, Optuna's GridSampler hands out a point that is still running."""
        trials = self.study.get_trials(deepcopy=False)
        return sum(t.number < trial.number and counts_toward_budget(t) for t in trials) >= budget(self.cfg)

    def _run_trial(self, trial: optuna.Trial, params: dict[str, Any], slot: Slot = ()) -> list[dict[str, Any]]:
        """Clean with ``params`` in the trial's run directory and record the run's points on the trial."""
        run_dir = Path(trial.user_attrs.get("run_dir") or self.cfg.sweep_dir / "trials" / f"trial-{trial.number:04d}")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        log_path = run_dir.with_suffix(".log")
        code, stopped_at = self._clean(trial, params, run_dir, log_path, slot)
        if stopped_at is None and code != 0:
            tail = log_path.read_text().strip().splitlines()[-1:] or [""]
            raise TrialFailed(f"exit code {code}: {tail[0]} (log: {log_path})")
        if read_back(self.study, trial).state != TrialState.RUNNING:
            raise TakenOver("presumed lost by another worker, whose retry of it records the results")
        points = trial_points(run_dir)
        if stopped_at is not None:
            points = [p for p in points if p["epoch"] <= stopped_at]
        elif not points:
            raise TrialFailed(f"{run_dir}/metrics.jsonl holds no evaluated epoch")
        elif points[-1]["asr"] is None:
            raise TrialFailed(f"{run_dir}/metrics.jsonl has no ASR: the poisoned run needs eval.attack")
        record_points(trial, points, stopped_at)
        return points

    def _clean(
        self, trial: optuna.Trial, params: dict[str, Any], run_dir: Path, log_path: Path, slot: Slot
    ) -> tuple[int, int | None]:
        """The cleaning run as a subprocess on ``slot``, its output in ``log_path``, under the trial's heartbeat
        and the run directory's lock. Returns its exit code and the epoch it was stopped after (None: not)."""
        cfg = self.cfg
        command = cli_command(
            cfg.launcher, "clean", cfg.run, "--defense", cfg.defense, "--name", run_dir.name,
            f"output_dir={run_dir.parent}", "train.progress=false", *as_overrides(cfg.overrides),
            *as_overrides(params),
        )  # fmt: skip
        env = slot_env(os.environ, slot)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.threads)))
        with (
            heartbeat(self.study, trial, cfg.heartbeat_s),
            exclusive(run_dir.with_suffix(".lock"), self.stopping),
            log_path.open("a") as log,
        ):
            devices = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if slot else ""
            log.write(f"$ {devices}{' '.join(command)}\n")
            log.flush()
            with self.lock:  # a stop that came while this trial was being sampled must not start it
                if self.stopping.is_set():
                    raise TrialFailed("interrupted before it started")
                child = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
                )
                self.children.add(child)
            stopped_at = self._watch(trial, child, run_dir) if cfg.early_stop else None
            code = child.wait()
            with self.lock:
                self.children.discard(child)
        return code, stopped_at

    def _watch(self, trial: optuna.Trial, child: subprocess.Popen, run_dir: Path) -> int | None:
        """While the trial's process runs, judge each new epoch record; stop the process when the sweep's
        pruner says so. Returns the epoch it was stopped after, or None if it ran to its end (or another
        worker took the trial over: then the caller finds it no longer RUNNING)."""
        judged, last = 0, None
        while child.poll() is None:
            last = last or _planned_epochs(run_dir)
            points = [p for p in trial_points(run_dir) if p["asr"] is not None] if last else []
            for end in range(judged + 1, len(points)):  # each epoch not judged yet, in order
                epoch = points[end]["epoch"]
                try:
                    stop = 1 <= epoch < last and stop_after_epoch(trial, points[: end + 1], self.cfg.asr_threshold)
                except optuna.exceptions.UpdateFinishedTrialError:
                    child.wait()  # presumed lost and retried elsewhere: let it end, judge nothing more
                    return None
                except Exception as err:  # a storage hiccup: judge this epoch again at the next poll
                    print(f"trial {trial.number}: epoch {epoch} not judged yet ({err!r})", flush=True)
                    break
                judged = end
                if stop:
                    child.terminate()  # its last epoch is never stopped: the run ends there anyway
                    return epoch
            with suppress(subprocess.TimeoutExpired):
                child.wait(timeout=POLL_S)
        return None


def _planned_epochs(run_dir: Path) -> int | None:
    """The epochs a trial's run was configured with, once its config.yaml is readable (None before)."""
    try:
        return load_config(run_dir / "config.yaml").train.epochs
    except Exception:  # not written yet, or caught half-written: read it again at the next poll
        return None
