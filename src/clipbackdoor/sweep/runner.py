"""Run a sweep: Optuna asks for parameters, each trial cleans the poisoned run in a subprocess.

A trial is a subprocess (``python -m clipbackdoor clean ...``, or under a launcher such as torchrun), so a
crashing or diverging trial cannot take the worker down, and a trial can itself be a multi-GPU job.
Workers share one Optuna storage: a journal file (the default, safe for several processes on one disk)
or a PostgreSQL URL for many machines.

Faults. A worker proves it is alive by a heartbeat (a trial user attribute) while its trial runs; a
worker that starts later marks a trial whose heartbeat went stale as failed and queues a retry with the
same parameters, which resumes the lost trial's run directory from its last checkpoint; a trial lost
more than MAX_LOST times is recorded as failed. Only the worker whose RUNNING -> FAIL transition succeeds
queues the retry, and a run directory is held under an exclusive file lock while a trial runs in it, so
no two workers ever run the same trial: a retry of a trial that was only presumed lost (its worker
paused, its heartbeat failed) waits for the lock, then finds the run finished. An interrupted worker
(Ctrl-C, SIGTERM) queues its own retries on the way out, however often. A sweep is done only when no
trial is running anywhere, so a sweep restarted right after a crash waits for its lost trials.

Devices. Each worker thread owns a slot of ``devices_per_trial`` devices (sweep/devices.py) and runs its
trials with ``CUDA_VISIBLE_DEVICES`` set to it; on CPU the slots are just process slots. Several sweep
processes joining one sweep on one machine must each be given their own ``--devices``.
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from clipbackdoor.config import ConfigError, save_config
from clipbackdoor.metrics_log import read_records
from clipbackdoor.resolve import load_config
from clipbackdoor.sweep.config import SweepConfig
from clipbackdoor.sweep.devices import Slot, device_slots, resolve_devices, slot_env
from clipbackdoor.sweep.launch import cli_command, die_with_parent
from clipbackdoor.sweep.space import as_overrides, grid_space
from clipbackdoor.sweep.stopping import stop_after_epoch, value_so_far

DIRECTIONS = ["maximize", "minimize"]  # clean accuracy, attack success rate
METRIC_NAMES = ["CA", "ASR"]  # the objectives' names in optuna-dashboard
VALUE_NAME = ["selection value"]  # the one objective of a sweep with early stopping (sweep/stopping.py)
IDENTITY_BEFORE = {"early_stop": "null"}  # what a sweep stored before an identity key existed had
POLL_S = 1.0  # how often a worker reads a running trial's metrics.jsonl when it may stop it
OTHERS_POLL_S = 5.0  # how often a worker whose sweep is done looks again at trials running in other processes
STALE_AFTER = 3  # heartbeats missed before a running trial counts as lost
MAX_LOST = 3  # a trial whose worker was lost this often is recorded as failed (it may be what kills them)
REUSE_LIMIT = 5  # trials per budgeted run, at most, when a sampler keeps proposing evaluated points


class TrialFailed(RuntimeError):
    """The trial's own run failed (non-zero exit): recorded as its failure, not retried."""


class TakenOver(RuntimeError):
    """Another worker presumed this trial lost and queued its retry, which records the results."""


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """``journal:<path>`` (a local journal file) or any SQLAlchemy URL (``postgresql://...``)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    import sqlalchemy.exc

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


def budget(cfg: SweepConfig) -> int:
    if cfg.trials is not None:
        return cfg.trials
    if cfg.sampler != "grid":
        raise ConfigError(f"sweep '{cfg.name}': the {cfg.sampler} sampler needs a 'trials' budget")
    sizes = [len(v) for v in grid_space(cfg.space).values()]
    return math.prod(sizes)


def stopped_early(t: FrozenTrial) -> bool:
    """A cleaning run the sweep's pruner stopped: PRUNED, with the epochs it ran as points (a trial pruned by
    the budget is PRUNED too, but never ran)."""
    return t.state == TrialState.PRUNED and "stopped_at" in t.user_attrs


def counts_toward_budget(t: FrozenTrial) -> bool:
    """Cleaning runs: finished, stopped early, running, or failed on their own. Lost (retried) trials and
    trials that reused an identical earlier trial's results do not count."""
    if "reused_from" in t.user_attrs:
        return False
    return (
        t.state in (TrialState.COMPLETE, TrialState.RUNNING)
        or stopped_early(t)
        or (t.state == TrialState.FAIL and "failure" in t.user_attrs)
    )


def epochs_run(t: FrozenTrial) -> int:
    """The cleaning epochs a trial ran (the cost a sweep counts): its last evaluated epoch; none if reused."""
    points = t.user_attrs.get("points", [])
    return 0 if "reused_from" in t.user_attrs or not points else max(p["epoch"] for p in points)


def sweep_done(study: optuna.Study, cfg: SweepConfig) -> bool:
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return False
    if cfg.sampler == "grid" and study.sampler.is_exhausted(study):
        return True
    runs = sum(map(counts_toward_budget, trials))
    return runs >= budget(cfg) or len(trials) >= REUSE_LIMIT * budget(cfg)  # a sampler stuck on known points


def completed_with(study: optuna.Study, params: dict[str, Any]) -> FrozenTrial | None:
    """An earlier complete (or early-stopped) trial with exactly these parameters: cleaning is deterministic,
    so its points are what this trial would measure."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.params == params and "points" in t.user_attrs and "reused_from" not in t.user_attrs:
            return t
    return None


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
    storage, lost = study._storage, trial.user_attrs.get("lost", 0) + 1
    try:
        storage.set_trial_user_attr(trial._trial_id, "lost", lost)  # the retry inherits the count
        if lost > MAX_LOST:
            storage.set_trial_user_attr(trial._trial_id, "failure", f"lost its worker {lost} times")
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if lost <= MAX_LOST:
        queue_retry(study, storage.get_trial(trial._trial_id))
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


def trial_points(run_dir: Path) -> list[dict[str, Any]]:
    """Every evaluated epoch of a cleaning run (epoch 0 = the poisoned model) as CA/ASR/RA points."""
    points = []
    for r in read_records(run_dir / "metrics.jsonl"):
        if r.get("kind") == "epoch" and "eval/clean_top1" in r:
            points.append(
                {
                    "epoch": r["epoch"],
                    "ca": r["eval/clean_top1"],
                    "asr": r.get("eval/asr_top1"),
                    "ra": r.get("eval/ra_top1"),
                }
            )
    return points


@contextmanager
def _exclusive(lock_path: Path, stopping: threading.Event) -> Iterator[None]:
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
def _heartbeat(study: optuna.Study, trial: optuna.Trial, every: float) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())
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


class Worker:
    """Runs trials of one sweep until its budget is met, on the device slots of the threads that call
    :meth:`_loop` (``threads`` of them share the machine's CPUs)."""

    def __init__(self, cfg: SweepConfig, threads: int = 1, worker_index: int = 0):
        self.cfg, self.threads = cfg, threads
        self.study = open_study(cfg, worker_index)
        self.stopping = threading.Event()
        self.children: set[subprocess.Popen] = set()
        self.taken_over: set[int] = set()  # trial ids another worker presumed lost while they ran here
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

    def _terminate(self) -> None:
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

    def _loop(self, slot: Slot = (), wait: bool = True) -> None:
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
            started: list[int] = []
            try:  # optimize, not ask/tell: the grid sampler stops the study from inside its loop
                objective = functools.partial(self._objective, started=started, slot=slot)
                self.study.optimize(objective, n_trials=1, catch=(TrialFailed,))
            except ValueError:  # Optuna cannot tell a trial another worker already failed: that one is fine
                if not self.taken_over.intersection(started):
                    raise
            finally:
                try:
                    for trial_id in set(started) - self.taken_over:  # an interrupted trial resumes next time
                        trial = self.study._storage.get_trial(trial_id)
                        if trial.state == TrialState.FAIL and "failure" not in trial.user_attrs:
                            queue_retry(self.study, trial)
                finally:
                    self._wake()

    def _objective(self, trial: optuna.Trial, started: list[int], slot: Slot = ()) -> float | tuple[float, float]:
        started.append(trial._trial_id)
        if self._budget_met_before(trial):
            raise optuna.TrialPruned("the budget was met by earlier trials")
        params = {name: spec.suggest(trial, name) for name, spec in self.cfg.space.items()}
        earlier = completed_with(self.study, params)
        if earlier is not None:  # a discrete space's sampler proposed a point already run: no second run
            for key in ("run_dir", "points", "ca", "asr", "ra", "stopped_at"):
                if key in earlier.user_attrs:
                    trial.set_user_attr(key, earlier.user_attrs[key])
            trial.set_user_attr("reused_from", earlier.number)
            if earlier.state == TrialState.PRUNED:
                raise optuna.TrialPruned(f"as trial {earlier.number}: stopped early")
            return earlier.values[0] if self.cfg.early_stop else tuple(earlier.values)
        try:
            points = self._run_trial(trial, params, slot)
        except TakenOver as err:
            self.taken_over.add(trial._trial_id)
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
        cfg = self.cfg
        run_dir = Path(trial.user_attrs.get("run_dir") or cfg.sweep_dir / "trials" / f"trial-{trial.number:04d}")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        command = cli_command(
            cfg.launcher, "clean", cfg.run, "--defense", cfg.defense, "--name", run_dir.name,
            f"output_dir={run_dir.parent}", "train.progress=false", *as_overrides(cfg.overrides),
            *as_overrides(params),
        )  # fmt: skip
        env = slot_env(os.environ, slot)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.threads)))
        log_path = run_dir.with_suffix(".log")
        with (
            _heartbeat(self.study, trial, cfg.heartbeat_s),
            _exclusive(run_dir.with_suffix(".lock"), self.stopping),
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
            stopped_at = self._watch(trial, child, run_dir) if self.cfg.early_stop else None
            code = child.wait()
            with self.lock:
                self.children.discard(child)
        if stopped_at is not None:
            if self.study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                raise TakenOver("presumed lost by another worker, whose retry of it records the results")
            points = [p for p in trial_points(run_dir) if p["epoch"] <= stopped_at]
            trial.set_user_attr("stopped_at", stopped_at)
            trial.set_user_attr("points", points)
            for key in ("ca", "asr", "ra"):
                trial.set_user_attr(key, points[-1][key])
            return points
        if code != 0:
            tail = log_path.read_text().strip().splitlines()[-1:] or [""]
            raise TrialFailed(f"exit code {code}: {tail[0]} (log: {log_path})")
        if self.study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            raise TakenOver("presumed lost by another worker, whose retry of it records the results")
        points = trial_points(run_dir)
        if not points:
            raise TrialFailed(f"{run_dir}/metrics.jsonl holds no evaluated epoch")
        if points[-1]["asr"] is None:
            raise TrialFailed(f"{run_dir}/metrics.jsonl has no ASR: the poisoned run needs eval.attack")
        trial.set_user_attr("points", points)
        for key in ("ca", "asr", "ra"):  # the last epoch's numbers, as columns of optuna-dashboard's trial table
            trial.set_user_attr(key, points[-1][key])
        return points

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


def run_sweeps(cfgs: list[SweepConfig], threads: int = 1, worker_index: int = 0) -> list[optuna.Study]:
    """Run (or resume, or join) several sweeps until each budget is met, on one set of ``threads`` device
    slots; returns their Optuna studies.

    Each slot's thread takes trials from the first sweep that still has one to start and moves on when none
    is left, so no slot idles at a sweep's end while a later sweep has work (a study's 11-point sweeps on 8
    GPUs, one after another, would leave 5 idle for every sweep's second round). Then each thread waits for
    the sweeps' running trials. The sweeps must share their devices (a study's do)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not cfgs:
        return []
    if len({(tuple(c.devices or ()), c.devices_per_trial) for c in cfgs}) > 1:
        raise ConfigError(f"sweeps {[c.name for c in cfgs]} run on one set of device slots: give them the same "
                          "devices and devices_per_trial")  # fmt: skip
    slots = device_slots(resolve_devices(cfgs[0].devices), cfgs[0].devices_per_trial, threads)
    workers = [Worker(cfg, threads, worker_index) for cfg in cfgs]
    for worker in workers:
        worker.prepare()
    if any(slots):
        print(f"[sweeps] device slots: {' | '.join(map(','.join, slots))}", flush=True)

    def work(slot: Slot) -> None:
        for worker in workers:
            worker._loop(slot, wait=False)
        for worker in workers:
            worker._loop(slot)

    def terminate(signum: int | None = None, frame: object = None) -> None:
        """Stop every trial, which then queues its retry; SIGTERM leaves as Ctrl-C does."""
        for worker in workers:
            worker._terminate()
        if signum is not None:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    pool = ThreadPoolExecutor(len(slots))
    try:
        for future in [pool.submit(work, slot) for slot in slots]:
            future.result()
    except KeyboardInterrupt:
        terminate()
        raise
    finally:
        pool.shutdown(wait=True)  # after an interrupt: once the trials have queued their retries
        signal.signal(signal.SIGTERM, previous)
    return [worker.study for worker in workers]


def run_sweep(cfg: SweepConfig, threads: int = 1, worker_index: int = 0) -> optuna.Study:
    """Run (or resume, or join) the sweep until its budget is met; returns the Optuna study."""
    return run_sweeps([cfg], threads, worker_index)[0]
