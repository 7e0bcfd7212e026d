"""Skip-and-count handling of bad rows, so one corrupt image cannot end a long run but many still do."""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(RuntimeError):
    """The data is unusable: too many bad rows, a missing file or column. The message names them."""


@dataclass(frozen=True)
class BadRow:
    """A row that was skipped: where it came from, its position, and why.

    ``index`` is the line number for file sources (``pairs.csv:17``, as editors and grep show it) and the
    sample index for in-memory ones.
    """

    source: str
    index: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.index}: {self.reason}"


@dataclass
class BadRowLog:
    """Counts skipped rows across a run and fails once more than ``limit`` were seen.

    Rows are reported by the dataset (at load time) and by the collate function (at decode time, possibly in
    a worker process), and all end up here in the main process.
    """

    limit: int
    seen: list[BadRow] = field(default_factory=list)
    _keys: set[tuple[str, int]] = field(default_factory=set)

    def add(self, rows: list[BadRow]) -> None:
        for row in rows:
            # A corrupt image is met again every epoch: count it once.
            if (row.source, row.index) not in self._keys:
                self._keys.add((row.source, row.index))
                self.seen.append(row)
        if len(self.seen) > self.limit:
            first = "\n  ".join(str(r) for r in self.seen[:5])
            raise DataError(
                f"{len(self.seen)} bad rows, more than data.max_bad_rows={self.limit}; first ones:\n  {first}"
            )

    @property
    def count(self) -> int:
        return len(self.seen)
