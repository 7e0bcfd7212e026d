"""Device slots: each sweep worker owns a slot of devices and runs its trials with CUDA_VISIBLE_DEVICES set to it."""

import itertools
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError
from clipbackdoor.sweep import load_sweep_config, open_study
from clipbackdoor.sweep.devices import detect_devices, device_slots, slot_env

from .test_sweep import write_sweep

WRAPPER = """\
import json, os, subprocess, sys, time
start = time.time()
time.sleep(0.3)  # widens each run's span, so that two runs sharing a slot would overlap
code = subprocess.call([sys.executable, *sys.argv[2:]])
record = {"devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(), "argv": sys.argv[2:]}
with open(os.path.join(sys.argv[1], f"{os.getpid()}.json"), "w") as f:
    json.dump(record, f)
sys.exit(code)
"""


def recording_launcher(tmp_path: Path, name: str) -> tuple[list[str], Path]:
    """A launcher that records each command it runs (its devices, start and end) in a folder, then runs it."""
    records = tmp_path / f"{name}-records"
    records.mkdir()
    wrapper = tmp_path / f"{name}.py"
    wrapper.write_text(WRAPPER)
    return [sys.executable, str(wrapper), str(records)], records


def launched(records: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]


def test_slots_are_disjoint_device_groups_or_process_slots_on_cpu() -> None:
    assert device_slots(["0", "1", "2", "3"], 2, 2) == [("0", "1"), ("2", "3")]
    assert device_slots(["0", "1", "2", "3"], 1, 2) == [("0",), ("1",)]  # devices beyond the workers stay idle
    assert device_slots(["0", "1", "2"], 2, 1) == [("0", "1")]  # a remainder too small for a slot is not used
    assert device_slots([], 4, 3) == [(), (), ()]
    with pytest.raises(ConfigError, match=r"3 workers need 3 slots of 2 device\(s\), but devices 0,1,2,3 make 2"):
        device_slots(["0", "1", "2", "3"], 2, 3)
    with pytest.raises(ConfigError, match="twice"):
        device_slots(["0", "0"], 1, 1)
    env = {"PATH": "/bin"}
    assert slot_env(env, ()) == env
    assert slot_env(env, ("2", "3")) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3"}


def test_detected_devices_are_the_names_children_understand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert detect_devices() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert detect_devices() == ["5", "7"]  # what this process was given, not torch's indices 0 and 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert detect_devices() == []


def test_devices_are_read_from_lists_strings_and_numbers(tmp_path: Path) -> None:
    config = write_sweep(tmp_path / "s.yaml", tmp_path)
    assert load_sweep_config(config).devices is None
    assert load_sweep_config(config, ["devices=0,1,2,3"]).devices == ["0", "1", "2", "3"]
    assert load_sweep_config(config, ["devices=[0, 1]"]).devices == ["0", "1"]
    assert load_sweep_config(config, ["devices=3"]).devices == ["3"]
    assert load_sweep_config(config, ["devices=[]"]).devices == []


def test_more_workers_than_slots_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_sweep(tmp_path / "s.yaml", tmp_path)
    assert main(["sweep", str(config), "--workers", "3", "--devices", "0,1,2,3", "--devices-per-trial", "2"]) == 2
    assert "3 workers need 3 slots" in capsys.readouterr().err


def test_each_trial_runs_on_its_workers_slot_and_no_two_share_one(poisoned: Path, tmp_path: Path) -> None:
    launcher, records = recording_launcher(tmp_path, "clean")
    grid = {"train.lr": {"low": 1e-6, "high": 1e-2, "log": True, "grid": [1e-4, 1e-3, 3e-3]}}
    config = write_sweep(tmp_path / "sweep.yaml", poisoned, launcher=launcher, space=grid)
    assert main(["sweep", str(config), "--workers", "2", "--devices", "0,1,2,3", "--devices-per-trial", "2"]) == 0
    cfg = load_sweep_config(config)
    saved = load_sweep_config(cfg.sweep_dir / "sweep.yaml")  # as it ran: the flags override the file
    assert saved.devices == ["0", "1", "2", "3"] and saved.devices_per_trial == 2
    trials = open_study(cfg).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # the wrapped trials are real runs
    runs = launched(records)
    assert len(runs) == 3 and all(r["argv"][:3] == ["-m", "clipbackdoor", "clean"] for r in runs)
    assert {r["devices"] for r in runs} == {"0,1", "2,3"}  # each saw exactly one slot; both slots worked
    for slot in ("0,1", "2,3"):
        spans = sorted((r["start"], r["end"]) for r in runs if r["devices"] == slot)
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans)), f"two trials at once on {slot}"
    logs = [Path(t.user_attrs["run_dir"]).with_suffix(".log").read_text() for t in trials]
    assert all(log.startswith("$ CUDA_VISIBLE_DEVICES=") for log in logs)


FAKE_TRIAL = """\
import json, os, sys, time
argv = sys.argv[1:]
out = next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir="))
run_dir = os.path.join(out, argv[argv.index("--name") + 1])
start = time.time()
time.sleep(1.0)
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"kind": "epoch", "epoch": 1, "eval/clean_top1": 50.0, "eval/asr_top1": 1.0}) + "\\n")
with open(run_dir + ".span.json", "w") as f:
    json.dump({"slot": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}, f)
"""


def test_a_study_s_sweeps_share_its_slots_so_none_idles_at_a_sweep_s_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three one-point sweeps on two slots: the second sweep starts while the first still runs, and the slot
    left waiting for the third's trial is woken when it ends, not at its next look (made 5 minutes here)."""
    from clipbackdoor.sweep import scheduling, worker

    monkeypatch.setattr(worker, "OTHERS_POLL_S", 300.0)
    trial = tmp_path / "fake_trial.py"
    trial.write_text(FAKE_TRIAL)
    fields = {
        "launcher": [sys.executable, str(trial)],
        "devices": ["0", "1"],
        "space": {"train.lr": {"choices": [1e-3]}},
        "heartbeat_s": 300.0,
    }
    cfgs = [load_sweep_config(write_sweep(tmp_path / f"s{i}.yaml", tmp_path, name=f"s{i}", **fields)) for i in range(3)]
    studies = scheduling.run_sweeps(cfgs, threads=2)
    returned = time.time()
    assert [len(s.get_trials(states=(TrialState.COMPLETE,))) for s in studies] == [1, 1, 1]
    spans = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweeps").glob("s*/trials/*.span.json"))]
    assert len(spans) == 3
    assert spans[1]["start"] < spans[0]["end"] and {spans[0]["slot"], spans[1]["slot"]} == {"0", "1"}
    assert returned - max(span["end"] for span in spans) < 60  # not the 300 s look
    with pytest.raises(ConfigError, match="same devices"):
        scheduling.run_sweeps([cfgs[0], cfgs[1].model_copy(update={"devices": ["2"]})])
