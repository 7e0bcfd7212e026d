"""Run sweeps: one worker thread per device slot, taking trials from the sweeps in order.

Each worker thread owns a slot of ``devices_per_trial`` devices (sweep/devices.py) and runs its trials with
``CUDA_VISIBLE_DEVICES`` set to it; on CPU the slots are just process slots. Several sweep processes joining
one sweep on one machine must each be given their own ``--devices``. Ctrl-C or SIGTERM stops every trial,
and each queues its retry before the process leaves (sweep/recovery.py).
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import optuna

from clipbackdoor.config import ConfigError
from clipbackdoor.sweep.config import SweepConfig
from clipbackdoor.sweep.devices import Slot, device_slots, resolve_devices
from clipbackdoor.sweep.worker import Worker


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
            worker.run_trials(slot, wait=False)
        for worker in workers:
            worker.run_trials(slot)

    def terminate(signum: int | None = None, frame: object = None) -> None:
        """Stop every trial, which then queues its retry; SIGTERM leaves as Ctrl-C does."""
        for worker in workers:
            worker.terminate()
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
