"""The package works installed from its wheel, away from this checkout: configs, model configs and the measured
rates `plan` reads travel as package data. The wheel goes into a fresh venv outside the repo that borrows our
venv's packages through a .pth file (no torch install), and runs from a folder with no benchmarks/ in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_wheel_plans_the_cc3m_study_with_its_shipped_measurements(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a clean copy: a build/ folder left in the checkout would leak stale modules
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
         source, cwd=tmp_path)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("clipbackdoor-*.whl")
    venv = tmp_path / "fresh"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    # our venv's packages come after the fresh venv's own, where the wheel goes
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip itself is borrowed too; run by the fresh venv's python it writes scripts that start that python, and
    # --ignore-installed keeps it from uninstalling the checkout's editable install it sees through the .pth
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(python, "-c", "import clipbackdoor; print(clipbackdoor.__file__)", cwd=work)
    assert where.startswith(str(site)), where  # the wheel's copy, not this checkout's
    out = _run(venv / "bin" / "clipbackdoor", "plan", "study-cc3m", "--gpus", "8", cwd=work)
    measured = site / "clipbackdoor" / "measured"
    assert "per core (mmcl, raw JPEGs" in out and f"(from {measured / 'data.json'})" in out
    assert f"training (from {measured / 'gpu_rn50_bf16.json'} (cuda, mmcl))" in out
    assert "no data-path measurement" not in out and "no measurement for this model" not in out
    assert "usage: clipbackdoor demo" in _run(venv / "bin" / "clipbackdoor", "demo", "--help", cwd=work)
