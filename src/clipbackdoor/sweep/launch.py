"""Commands run as subprocesses: the ``clipbackdoor`` command line, under a launcher or a plain Python.

``python -m clipbackdoor`` and ``torchrun ... -m clipbackdoor`` both run the package's ``__main__`` (torchrun
starts ``python -u -m <module>`` per rank), so one module name serves both.
"""

from __future__ import annotations

import ctypes
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

CLI_MODULE = "clipbackdoor"
try:  # resolved once here: after fork, a threaded worker's child must not dlopen (the loader lock)
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not Linux: children do not follow a killed parent
    _PRCTL = None


def cli_command(launcher: Sequence[str], subcommand: str, *args: str) -> list[str]:
    """``[*launcher, -m, clipbackdoor, subcommand, *args]``; no launcher: this Python."""
    return [*(launcher or [sys.executable]), "-m", CLI_MODULE, subcommand, *args]


def die_with_parent() -> None:
    """In a child (preexec_fn): get SIGTERM when the parent dies, even by SIGKILL (Linux prctl)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_teed(command: list[str], log_path: Path, env: Mapping[str, str], echo: Callable[[str], object] = print) -> int:
    """Run ``command``, its output appended to ``log_path`` and echoed line by line; returns the exit code.

    An interrupt (Ctrl-C) stops the child before it is passed on.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},  # lines as they come, not a block at the end
            text=True,
            errors="replace",
            preexec_fn=die_with_parent,
        )
        try:
            for line in child.stdout:
                log.write(line)
                log.flush()
                echo(line.rstrip("\n"))
            return child.wait()
        except BaseException:
            child.terminate()
            child.wait()
            raise
