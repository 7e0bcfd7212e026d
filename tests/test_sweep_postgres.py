"""Two sweep worker processes share one study in a real PostgreSQL server started on loopback."""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from clipbackdoor.sweep import load_sweep_config, open_study

from .test_sweep import TINY_CLEANING

INSTALL_HINT = "PostgreSQL is not installed: `apt-get install postgresql` (make install does it where apt exists)"


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # Debian links a few tools into /usr/local/bin
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip(INSTALL_HINT)
    pytest.importorskip("psycopg2", reason="psycopg2 is missing: pip install 'clipbackdoor[postgres]'")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="clipbackdoor-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as Debian's postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    run(str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    run(str(pg_bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # CI: two sweep workers on one journal study in test_rehearsal and test_sweep_devices
def test_two_workers_share_one_study_in_postgresql(poisoned: Path, tmp_path: Path, postgres_url: str) -> None:
    grid = [1e-5, 1e-4, 1e-3, 3e-3]
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "pg-sweep",
                "run": str(poisoned),
                "defense": "mmcl-only",
                "output_dir": str(tmp_path / "sweeps"),
                "storage": postgres_url,
                "sampler": "grid",
                "space": {"train.lr": {"low": 1e-6, "high": 1e-2, "log": True, "grid": grid}},
                "overrides": TINY_CLEANING,
            }
        )
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "clipbackdoor", "sweep", str(config), "--worker-index", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    trials = open_study(load_sweep_config(config)).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary = [(t.number, t.state.name, t.params, t.user_attrs.get("failure")) for t in trials]
    assert sorted(t.params["train.lr"] for t in complete) == grid, summary  # every grid point, none twice
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)  # no trial ran twice
    assert len({t.user_attrs["worker"] for t in complete}) == 2, outputs  # both workers took trials
