import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError
from clipbackdoor.report.build import SweepResult, _label_models, _panels
from clipbackdoor.study.config import load_study_config
from clipbackdoor.sweep import (
    Point,
    best_under,
    hypervolume,
    load_sweep_config,
    open_study,
    pareto_front,
    sweep_points,
)
from clipbackdoor.sweep.recovery import MAX_LOST, TrialFailed, exclusive, requeue_lost_trials
from clipbackdoor.sweep.space import ParamSpec, as_overrides, grid_space
from clipbackdoor.sweep.storage import DIRECTIONS, _identity, open_storage
from clipbackdoor.sweep.trials import REUSE_LIMIT, budget, stopped_early, sweep_done, trial_points
from clipbackdoor.sweep.worker import Worker

TINY_CLEANING = {"train.epochs": 1, "train.batch_size": 16, "train.warmup_steps": 1, "train.keep_last": 1}


def write_sweep(path: Path, poisoned: Path, **fields) -> Path:
    spec = {
        "name": "tiny-sweep",
        "run": str(poisoned),
        "defense": "mmcl-only",
        "output_dir": str(path.parent / "sweeps"),
        "sampler": "grid",
        "space": {"train.lr": {"low": 1e-6, "high": 1e-2, "log": True, "grid": [1e-4, 3e-3]}},
        "overrides": TINY_CLEANING,
        **fields,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_param_spec_validation_and_overrides() -> None:
    with pytest.raises(ValueError, match="either low and high, or choices"):
        ParamSpec(low=1, high=2, choices=[1])
    with pytest.raises(ValueError, match="outside"):
        ParamSpec(low=1e-5, high=1e-3, grid=[1e-2])
    with pytest.raises(ValueError, match="low > 0"):
        ParamSpec(low=0, high=1, log=True)
    with pytest.raises(ValueError, match="among the choices"):
        ParamSpec(choices=[1, 2], grid=[3])
    with pytest.raises(ConfigError, match=r"needs a 'grid' list for \['train.lr'\]"):
        grid_space({"train.lr": ParamSpec(low=1e-5, high=1e-3)})
    assert grid_space({"e": ParamSpec(choices=[1, 2])}) == {"e": [1, 2]}
    spec = yaml.safe_load("{low: 1.0e-6, high: 1.0e-2, grid: [1e-5, 3.0e-4]}")  # YAML 1.1: '1e-5' is a string
    assert ParamSpec(**spec).grid == [1e-5, 3e-4]
    assert ParamSpec(choices=["1e-5", "adamw", 2]).choices == [1e-5, "adamw", 2]
    assert as_overrides({"train.lr": 1e-4, "defense.name": "x"}) == ["train.lr=0.0001", 'defense.name="x"']


def test_sweep_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "run": "r", "space": {"train.lr": {"low": 1}}, "trials": 0}))
    with pytest.raises(ConfigError) as err:
        load_sweep_config(path)
    assert "space.train.lr" in str(err.value) and "trials" in str(err.value) and str(path) in str(err.value)
    ok = load_sweep_config(write_sweep(tmp_path / "ok.yaml", tmp_path), ["sampler=tpe"])
    with pytest.raises(ConfigError, match="needs a 'trials' budget"):
        budget(ok)
    assert budget(ok.model_copy(update={"sampler": "grid"})) == 2


def test_selection_rule_pareto_front_and_hypervolume() -> None:
    pts = [Point(80, 50, 1, 0), Point(70, 4, 1, 1), Point(75, 5, 2, 1), Point(74, 5, 1, 2), Point(60, 1, 3, 2)]
    assert best_under(pts) == Point(75, 5, 2, 1)  # highest CA with ASR <= 5 (inclusive)
    assert best_under(pts, asr_threshold=4.5) == Point(70, 4, 1, 1)
    assert best_under(pts, asr_threshold=0.5) is None
    assert pareto_front(pts) == [Point(60, 1, 3, 2), Point(70, 4, 1, 1), Point(75, 5, 2, 1), Point(80, 50, 1, 0)]
    # dominated area, by hand: ASR 1..4 at CA 60, 4..5 at 70, 5..50 at 75, 50..100 at 80; box 100 x 100
    expected = (3 * 60 + 1 * 70 + 45 * 75 + 50 * 80) / 10_000
    assert math.isclose(hypervolume(pts), expected)
    assert hypervolume([]) == 0.0


def test_grid_sweep_runs_every_point_resumes_and_reports(poisoned: Path, tmp_path: Path) -> None:
    config = write_sweep(tmp_path / "sweep.yaml", poisoned)
    assert main(["sweep", str(config)]) == 0
    cfg = load_sweep_config(config)
    study = open_study(cfg)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["train.lr"] for t in trials) == [1e-4, 3e-3]
    for t in trials:
        assert [p["epoch"] for p in t.user_attrs["points"]] == [0, 1]  # every evaluated (trial, epoch)
        run_dir = Path(t.user_attrs["run_dir"])
        run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert run_cfg["train"]["lr"] == t.params["train.lr"] and run_cfg["objective"] == {"mmcl": 1.0}
        assert t.values[0] == t.user_attrs["points"][-1]["ca"]
    assert sweep_done(study, cfg)
    # what optuna-dashboard shows: the journal read with Optuna's own storage API, not ours
    journal = JournalStorage(JournalFileBackend(cfg.storage_url.removeprefix("journal:")))
    stored = optuna.load_study(study_name=cfg.name, storage=journal)
    assert stored.metric_names == ["CA", "ASR"]
    for t in stored.get_trials(states=(TrialState.COMPLETE,)):
        last = t.user_attrs["points"][-1]
        assert [t.user_attrs[k] for k in ("ca", "asr", "ra")] == [last["ca"], last["asr"], last["ra"]]
        assert t.user_attrs["ra"] is not None
    assert main(["sweep", str(config)]) == 0  # a finished sweep runs nothing more
    assert len(open_study(cfg).trials) == 2

    out = tmp_path / "report"
    assert main(["report", str(cfg.sweep_dir), "--out", str(out), "--title", "tiny"]) == 0
    md = (out / "report.md").read_text()
    assert "| MMCL | " in md and "mmcl-only" in md and "Made by `clipbackdoor report" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html  # self-contained
    for name in ("ca_vs_asr", "pareto", "trajectories", "pretraining"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000
    rows = (out / "points.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + 2  # header, the poisoned model, one cleaned epoch per trial

    moved = tmp_path / "elsewhere" / cfg.name  # a sweep dir moved after its run: its journal moved with it
    moved.parent.mkdir()
    cfg.sweep_dir.rename(moved)
    assert main(["report", str(moved), "--out", str(tmp_path / "report2")]) == 0
    assert (tmp_path / "report2" / "points.csv").read_text().splitlines()[1:] == rows[1:]


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.2)


def test_killed_worker_trial_is_failed_requeued_and_resumed(poisoned: Path, tmp_path: Path) -> None:
    """SIGKILL a worker mid-trial: its child dies with it, and the next worker retries the trial once, in the
    same run directory, after its heartbeat went stale."""
    config = write_sweep(
        tmp_path / "sweep.yaml", poisoned, heartbeat_s=0.5, overrides={**TINY_CLEANING, "train.epochs": 2},
        space={"train.lr": {"choices": [1e-4]}},
    )  # fmt: skip
    cfg = load_sweep_config(config)
    worker = subprocess.Popen([sys.executable, "-m", "clipbackdoor", "sweep", str(config)], start_new_session=True)
    checkpoint = cfg.sweep_dir / "trials" / "trial-0000" / "checkpoints" / "latest.json"
    try:
        _wait_for(checkpoint.is_file)  # mid-trial: after epoch 1 of 2
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    study = open_study(cfg)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    log = cfg.sweep_dir / "trials" / "trial-0000.log"
    size = log.stat().st_size
    time.sleep(1.0)  # the orphaned trial process got SIGTERM with its parent: its log stops growing
    assert log.stat().st_size == size
    assert main(["sweep", str(config)]) == 0  # restarted before the loss shows: waits for it, then retries
    trials = open_study(cfg).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["run_dir"] == trials[0].user_attrs["run_dir"]  # resumed, not restarted
    records = [json.loads(line) for line in (Path(trials[1].user_attrs["run_dir"]) / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1, 2]


def test_sigterm_queues_the_interrupted_trial_which_resumes_next_time(poisoned: Path, tmp_path: Path) -> None:
    config = write_sweep(
        tmp_path / "sweep.yaml", poisoned, overrides={**TINY_CLEANING, "train.epochs": 2},
        space={"train.lr": {"choices": [1e-4]}},
    )  # fmt: skip
    cfg = load_sweep_config(config)
    worker = subprocess.Popen([sys.executable, "-m", "clipbackdoor", "sweep", str(config)])
    _wait_for((cfg.sweep_dir / "trials" / "trial-0000" / "checkpoints" / "latest.json").is_file)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) != 0
    trials = open_study(cfg).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # failed as interrupted, queued
    assert "failure" not in trials[0].user_attrs
    assert main(["sweep", str(config)]) == 0
    trials = open_study(cfg).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["run_dir"] == trials[0].user_attrs["run_dir"]


def test_a_proposal_of_an_evaluated_point_reuses_it_without_a_run(poisoned: Path, tmp_path: Path) -> None:
    config = write_sweep(
        tmp_path / "sweep.yaml", poisoned, sampler="tpe", trials=2, space={"train.lr": {"choices": [1e-4]}}
    )
    assert main(["sweep", str(config)]) == 0
    trials = open_study(load_sweep_config(config)).trials
    assert len(trials) == REUSE_LIMIT * 2  # one point only: the sampler can never reach a second run
    assert [t.user_attrs.get("reused_from") for t in trials] == [None] + [0] * (len(trials) - 1)
    assert len(list((tmp_path / "sweeps" / "tiny-sweep" / "trials").glob("trial-*/"))) == 1
    points, _ = sweep_points(open_study(load_sweep_config(config)))
    assert len(points) == 1  # reused trials add no duplicate points


def test_failing_trial_is_recorded_not_retried(poisoned: Path, tmp_path: Path) -> None:
    config = write_sweep(tmp_path / "sweep.yaml", poisoned, space={"train.batch_size": {"choices": [4096]}})
    assert main(["sweep", str(config)]) == 0
    (trial,) = open_study(load_sweep_config(config)).trials
    assert trial.state == TrialState.FAIL and "exit code 2" in trial.user_attrs["failure"]
    assert "exceeds" in trial.user_attrs["failure"]  # the trial's own error, from its log


def test_tpe_and_nsga2_samplers_draw_within_the_space(tmp_path: Path) -> None:
    for sampler in ("tpe", "nsga2"):
        cfg = load_sweep_config(write_sweep(tmp_path / "s.yaml", tmp_path), [f"sampler={sampler}", f"name={sampler}"])
        study = open_study(cfg)
        for _ in range(6):
            trial = study.ask()
            lr = cfg.space["train.lr"].suggest(trial, "train.lr")
            assert 1e-6 <= lr <= 1e-2
            study.tell(trial, [lr * 1e3, 1.0])
        assert len({t.params["train.lr"] for t in study.trials}) == 6
        assert isinstance(study.sampler, optuna.samplers.TPESampler | optuna.samplers.NSGAIISampler)


def test_a_run_directory_is_held_by_one_worker_at_a_time(tmp_path: Path) -> None:
    """A retry of a trial that was only presumed lost waits for the lock; a stop ends the wait."""
    lock = tmp_path / "trial-0000.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,time; f=open({str(lock)!r},'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    acquired = threading.Event()

    def take() -> None:
        with exclusive(lock, threading.Event()):
            acquired.set()

    taker = threading.Thread(target=take)
    try:
        assert holder.stdout.readline().strip() == "held"
        stopping = threading.Event()
        threading.Timer(0.5, stopping.set).start()
        with pytest.raises(TrialFailed, match="interrupted while waiting"), exclusive(lock, stopping):
            pass
        taker.start()
        assert not acquired.wait(1.5)  # waits while its holder lives
    finally:
        holder.kill()
        holder.wait()
    taker.join(timeout=10)
    assert acquired.is_set()  # taken once its holder died


def test_a_lost_trial_is_retried_at_most_max_lost_times(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'j.log'}"), directions=DIRECTIONS)
    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)})
    lr = trial.params["train.lr"]
    for lost in range(1, MAX_LOST + 2):
        time.sleep(0.05)  # no heartbeat for more than STALE_AFTER x 0.01 s
        assert requeue_lost_trials(study, heartbeat_s=0.01) == [trial.number]
        assert requeue_lost_trials(study, heartbeat_s=0.01) == []  # queued once only
        last = study.get_trials()[-1]
        if lost <= MAX_LOST:
            assert last.state == TrialState.WAITING and last.user_attrs["lost"] == lost
            trial = study.ask()  # a worker takes the retry: the same parameters
            assert trial.params == {"train.lr": lr}
    assert last.state == TrialState.FAIL and last.user_attrs["failure"] == f"lost its worker {MAX_LOST + 1} times"
    assert [t.state for t in study.get_trials()].count(TrialState.WAITING) == 0


def test_resuming_a_sweep_with_other_settings_is_refused(tmp_path: Path) -> None:
    config = write_sweep(tmp_path / "s.yaml", tmp_path)
    open_study(load_sweep_config(config))
    with pytest.raises(ConfigError, match=r"overrides=.*give the changed sweep a new name"):
        open_study(load_sweep_config(config, ["overrides.train\\.epochs=3"]))
    with pytest.raises(ConfigError, match="space="):
        open_study(load_sweep_config(config, ["space.train\\.lr.grid=[1e-4]"]))
    open_study(load_sweep_config(config, ["heartbeat_s=5"]))  # how it runs may change


def test_report_keeps_two_poisoned_models_with_one_objective_apart() -> None:
    point = Point(ca=80.0, asr=1.0, ra=None, trial=0, epoch=1, params={"train.lr": 1e-4}, run_dir="x")
    results = [
        SweepResult(name=f"{run}--cleanclip", pretrain="MMCL", defense="cleanclip", poisoned_run=Path(run),
                    points=[point], poisoned=None, runs=1, failed=0)
        for run in ("cc3m/mmcl", "cc6m/mmcl")
    ]  # fmt: skip
    _label_models(results)
    assert [r.pretrain for r in results] == ["MMCL (cc3m/mmcl)", "MMCL (cc6m/mmcl)"]
    assert [p.title for p in _panels(results, 5.0)] == ["MMCL (cc3m/mmcl)", "MMCL (cc6m/mmcl)"]


def test_a_study_refuses_two_defense_recipes_that_would_share_a_sweep(tmp_path: Path) -> None:
    spec = {"space": {"train.lr": {"choices": [1e-4]}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "pretrain": {"mmcl": {}},
                                    "defenses": {"cleanclip": spec, "mine/cleanclip.yaml": spec}}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"two recipes named \['cleanclip'\]"):
        load_study_config(path)


def test_a_trial_past_the_budget_is_pruned_not_run(tmp_path: Path) -> None:
    """Two workers can both pass the budget check for the last run: the later trial must not run."""
    cfg = load_sweep_config(write_sweep(tmp_path / "s.yaml", tmp_path, sampler="tpe", trials=1))
    worker = Worker(cfg)
    first, second = worker.study.ask(), worker.study.ask()  # both created while the budget looked open
    with pytest.raises(optuna.TrialPruned):
        worker._objective(second, started=[])
    assert not worker._budget_met_before(first)  # the first created may run


def test_early_stopping_ends_a_hopeless_trial_and_keeps_its_epochs_as_points(poisoned: Path, tmp_path: Path) -> None:
    """A median pruner on the selection value (asr_threshold 100: every value is CA). The first trial (lr 3e-3,
    first in the grid's order under seed 1) runs to its end. The second (lr 1e-7, which leaves the
    under-trained model as it is) is stopped after the first epoch at which it falls behind the first trial
    (the median of one), its process terminated, and its epochs stay points."""
    early_stop = {"pruner": "median", "options": {"n_startup_trials": 1}}
    space = {"train.lr": {"low": 1e-8, "high": 1e-2, "log": True, "grid": [3e-3, 1e-7]}}
    overrides = {**TINY_CLEANING, "train.epochs": 6}
    config = write_sweep(tmp_path / "sweep.yaml", poisoned, space=space, early_stop=early_stop, asr_threshold=100.0,
                         seed=1, overrides=overrides)  # fmt: skip
    assert main(["sweep", str(config)]) == 0
    cfg = load_sweep_config(config)
    first, second = sorted(open_study(cfg).trials, key=lambda t: t.number)
    assert first.params["train.lr"] == 3e-3 and first.state == TrialState.COMPLETE

    def so_far(trial) -> dict[int, float]:  # the selection value after each epoch: the best CA so far
        cleaned = [p for p in trial.user_attrs["points"] if p["epoch"] >= 1]
        return {p["epoch"]: max(q["ca"] for q in cleaned[: i + 1]) for i, p in enumerate(cleaned)}

    leader, chaser = so_far(first), so_far(second)
    assert first.values == [leader[6]]
    behind = next(e for e in range(1, 6) if chaser.get(e, -1) < leader[e])
    assert second.state == TrialState.PRUNED and second.user_attrs["stopped_at"] == behind
    assert [p["epoch"] for p in second.user_attrs["points"]] == list(range(behind + 1))
    assert second.intermediate_values == {e: chaser[e] for e in range(1, behind + 1)}
    assert len(trial_points(Path(second.user_attrs["run_dir"]))) < 7  # stopped before its last epoch (0..6)
    points, _ = sweep_points(open_study(cfg))
    assert sorted(p.epoch for p in points if p.trial == second.number) == list(range(1, behind + 1))
    assert stopped_early(second) and not stopped_early(first)
    out = tmp_path / "report"
    assert main(["report", str(cfg.sweep_dir), "--out", str(out)]) == 0
    sweeps = (out / "report.md").read_text().split("## Sweeps")[1]
    assert f"| 2 (1) | {6 + behind} |" in sweeps  # runs (stopped early), cleaning epochs


def test_early_stop_is_part_of_a_sweeps_identity_and_needs_every_epoch(tmp_path: Path) -> None:
    config = write_sweep(tmp_path / "sweep.yaml", tmp_path, sampler="tpe", trials=2)
    plain = load_sweep_config(config)
    old = optuna.create_study(study_name=plain.name, storage=open_storage(plain.storage_url), directions=DIRECTIONS)
    for key, value in _identity(plain).items():  # a sweep stored before early_stop was part of the identity
        if key != "early_stop":
            old.set_user_attr(key, value)
    stopping = load_sweep_config(config, ["early_stop={pruner: median}"])
    with pytest.raises(ConfigError, match="was made with early_stop='null'"):  # refused, nothing written
        open_study(stopping)
    stored = optuna.load_study(study_name=plain.name, storage=open_storage(plain.storage_url))
    assert "early_stop" not in stored.user_attrs
    assert open_study(plain).user_attrs["early_stop"] == "null"  # the old sweep resumes as it was
    with pytest.raises(ValueError, match=r"needs eval\.every_epoch true"):
        load_sweep_config(config, ["early_stop={pruner: median}", "overrides={eval.every_epoch: false}"])
    with pytest.raises(ValueError, match=r"do not fit optuna\.pruners\.MedianPruner"):
        load_sweep_config(config, ["early_stop={pruner: median, options: {percentile: 50}}"])
