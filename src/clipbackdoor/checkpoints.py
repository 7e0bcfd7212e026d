"""Checkpoints: weights as safetensors, training state as a weights-only torch file, both written atomically.

Neither format can execute code on load. A run directory's ``checkpoints/latest.json`` names the last
complete checkpoint; it is replaced only after both files are on disk, so a crash mid-write leaves the
previous checkpoint in force.
"""

from __future__ import annotations

import json
import os
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from clipbackdoor.interop import Checkpoint, read_checkpoint

FORMAT = "clipbackdoor/1"
LATEST = "latest.json"


# Fault injection for the crash tests: CLIPBACKDOOR_KILL_IN_WRITE=N kills the process (SIGKILL) in the
# middle of its N-th atomic write, after the temporary file is on disk and before it replaces the old one.
_KILL_IN_WRITE = int(os.environ.get("CLIPBACKDOOR_KILL_IN_WRITE", "0"))
_writes = 0


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: readers see the old or the new file."""
    global _writes
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _writes += 1
        if _writes == _KILL_IN_WRITE:
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, **metadata}))


def resolve_weights(path: str | Path) -> Path:
    """A weights file as given, or the latest one of a run directory or checkpoints/ folder."""
    path = Path(path)
    return latest_checkpoint(path)["weights"] if path.is_dir() else path


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load weights into ``model``: ours, or another tool's (see :mod:`clipbackdoor.interop`); names missing
    or unexpected keys on mismatch."""
    apply_weights(model, read_checkpoint(resolve_weights(path)))


def apply_weights(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Load a checkpoint already read (and checked against the model) into ``model``; names missing or
    unexpected keys on mismatch."""
    try:
        missing, unexpected = model.load_state_dict(checkpoint.state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{checkpoint.path}: does not fit the model: {str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint.path}: does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """What our safetensors checkpoints say about themselves (model name, epoch); empty for other formats."""
    path = resolve_weights(path)
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def checkpoint_model_name(path: str | Path) -> str | None:
    return checkpoint_metadata(path).get("model_name")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))


def epoch_weights(directory: str | Path, epoch: int) -> Path:
    """Where a run's weights after ``epoch`` are written: ``<checkpoints>/epoch_NNN.safetensors``."""
    return Path(directory) / f"epoch_{epoch:03d}.safetensors"


def save_checkpoint(
    directory: Path,
    epoch: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    metadata: dict[str, str],
    keep_last: int | None = None,
) -> Path:
    """Write ``epoch_NNN.safetensors`` + ``epoch_NNN.state.pt``, then point ``latest.json`` at them."""
    weights = epoch_weights(directory, epoch)
    state_file = weights.with_name(f"{weights.stem}.state.pt")
    save_weights(model, weights, {**metadata, "epoch": str(epoch)})
    _atomic_write(state_file, lambda tmp: torch.save({**state, "epoch": epoch}, tmp))
    pointer = {"epoch": epoch, "weights": weights.name, "state": state_file.name}
    _atomic_write(directory / LATEST, lambda tmp: Path(tmp).write_text(json.dumps(pointer)))
    if keep_last is not None:
        for old in sorted(directory.glob("epoch_*.safetensors"))[:-keep_last]:
            old.unlink()
            old.with_name(old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)
    return weights


def latest_checkpoint(directory: str | Path) -> dict[str, Any]:
    """``{"epoch", "weights": Path, "state": Path}`` of the newest complete checkpoint in ``directory``."""
    directory = Path(directory)
    pointer_file = directory / LATEST
    if not pointer_file.is_file():
        directory = directory / "checkpoints"
        pointer_file = directory / LATEST
    if not pointer_file.is_file():
        raise FileNotFoundError(f"no {LATEST} in {directory}: not a checkpoint folder")
    pointer = json.loads(pointer_file.read_text())
    return {
        "epoch": int(pointer["epoch"]),
        "weights": directory / pointer["weights"],
        "state": directory / pointer["state"],
    }


def load_state(path: Path) -> dict[str, Any]:
    """The training state; ``weights_only`` refuses any pickled object that is not plain data."""
    return torch.load(path, map_location="cpu", weights_only=True)
