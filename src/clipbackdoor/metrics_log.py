"""metrics.jsonl: one JSON record per line, appended as the run goes and trimmed back on resume."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record; a half-written last line (a crash mid-append) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


class MetricsLog:
    def __init__(self, path: Path, listeners: list[Callable[[dict[str, Any]], None]] | None = None):
        self.path = path
        self.listeners = listeners or []  # called with every appended record (the hooks' on_record)

    def keep_through_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """Drop records of epochs after ``epoch`` (work a crash undid); return the kept epoch records."""
        kept = [r for r in read_records(self.path) if r.get("epoch", 0) <= epoch]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        return [r for r in kept if r.get("kind") == "epoch"]

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        for listener in self.listeners:
            listener(record)
