"""CSV sources in CleanCLIP's layout: a header row, paths relative to the CSV file.

Rows with an empty caption or label are dropped at load time and reported as bad rows; images are only
opened when read, so a missing or corrupt image is reported (and skipped) by the dataset at that point.
Rows are named by their line number in the file, which is what a user opens an editor at.

An image path must resolve (links followed) inside the dataset root, so a link planted in the dataset cannot
lead a row to any file on the machine. A poisoned copy written by this tool reaches its source's clean images
through a link ``source``; the manifest next to its CSV records that source, whose root is then allowed too.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from clipbackdoor.data.bad_rows import BadRow, DataError
from clipbackdoor.data.manifest_format import MANIFEST_FORMAT
from clipbackdoor.data.transforms import open_image


def _read_rows(path: Path, columns: list[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, [values of ``columns``]) for every data row; errors name the file and line.

    Bytes that are not UTF-8 are kept as surrogate escapes, so one bad row is skipped, not the whole file.
    """
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header with columns {columns}") from None
        except csv.Error as err:
            raise DataError(f"{path}: line 1: {err}") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the header has {header}")
        where = [header.index(c) for c in columns]
        try:
            for row in reader:
                yield reader.line_num, [row[i] if i < len(row) else "" for i in where]
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num}: {err}") from None


def _not_utf8(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _manifest_csv_source(path: Path) -> dict[str, Any] | None:
    """The CSV source a poison manifest records (its config: ``path``, ``root``), or None if there is none.

    Any other file of that name (no manifest of ours, or not readable) adds nothing, so it cannot widen the
    roots; a poisoned copy whose manifest is unusable then has its clean rows refused, each one named.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    source = raw.get("source") if isinstance(raw, dict) and raw.get("format") == MANIFEST_FORMAT else None
    if isinstance(source, dict) and source.get("source") == "csv" and isinstance(source.get("path"), str):
        return source
    return None


def _allowed_roots(csv_path: Path, boundary: Path, seen: frozenset[str] = frozenset()) -> list[str]:
    """The resolved folders the image paths of ``csv_path`` may lead into: its dataset root ``boundary`` and,
    for a poisoned copy, the root of the CSV source its manifest records (that source's own ``root``, or its
    folder), which is what the copy's ``source`` link points to.

    Relative paths in the manifest are taken from the working directory, as in the config it was written
    from. A source that is itself a poisoned copy adds its own source in turn (``seen`` stops a cycle).
    """
    roots = [os.path.realpath(boundary)]
    here = os.path.realpath(csv_path)
    source = _manifest_csv_source(csv_path.parent / "manifest.json")
    if source is not None and here not in seen:
        path = Path(source["path"])
        roots += _allowed_roots(path, Path(source.get("root") or path.parent), seen | {here})
    return roots


class PathResolver:
    """Resolves paths as ``os.path.realpath`` does (every link followed), resolving each folder only once.

    A full resolve checks every component of the path; rows share few folders, so caching them keeps the
    check at one ``lstat`` per row, seconds rather than minutes on a CSV of millions of rows.
    """

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        folder, name = os.path.split(path)
        if name in ("", ".", ".."):  # the path names a folder: appending the name to its parent would be wrong
            return os.path.realpath(path)
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        target = os.path.join(self._folders[folder], name)
        return os.path.realpath(target) if os.path.islink(target) else target


class CsvRows:
    """Base for CSV readers: resolves image paths and opens images, naming file and line on failure.

    Rows are skipped and counted (``bad``) when a field is empty or not UTF-8, when the image path (relative
    to the CSV) resolves outside the dataset ``root`` (default: the CSV's folder; ``../``, an absolute path
    elsewhere or a link pointing out) and outside the source root a poison manifest allows (see
    :func:`_allowed_roots`), or when the row repeats an earlier one.
    """

    def __init__(
        self,
        path: str | Path,
        image_column: str,
        value_column: str,
        delimiter: str,
        max_samples: int | None,
        root: str | Path | None = None,
    ):
        self.path = Path(path)
        self.root = self.path.parent  # image paths are relative to the CSV, as in CleanCLIP's layout
        self.source = str(self.path)
        self.bad: list[BadRow] = []
        self.lines: list[int] = []
        self.ordinals: list[int] = []  # the row's place among the file's data rows: what a manifest numbers
        self.images: list[str] = []
        self.values: list[str] = []
        boundary = Path(root) if root is not None else self.root
        inside = tuple(os.path.join(r, "") for r in _allowed_roots(self.path, boundary))
        resolve = PathResolver()
        first_seen: dict[tuple[str, str], int] = {}
        for ordinal, (line, (image, value)) in enumerate(
            _read_rows(self.path, [image_column, value_column], delimiter)
        ):
            if max_samples is not None and len(self.lines) >= max_samples:
                break
            image, value = image.strip(), value.strip()
            problem = None
            if not image or not value:
                problem = f"empty {(image_column if not image else value_column)!r}"
            elif _not_utf8(image) or _not_utf8(value):
                problem = "not valid UTF-8"
            elif not (target := resolve(os.path.join(self.root, image))).startswith(inside):
                problem = f"image path {image!r} leaves the dataset root {boundary}: it resolves to {target}"
            elif (image, value) in first_seen:
                problem = f"duplicate of line {first_seen[image, value]}"
            if problem is not None:
                self.bad.append(BadRow(self.source, line, problem))
                continue
            first_seen[image, value] = line
            self.lines.append(line)
            self.ordinals.append(ordinal)
            self.images.append(image)
            self.values.append(value)
        if not self.lines:
            raise DataError(f"{self.path}: no usable rows ({len(self.bad)} bad)")

    def __len__(self) -> int:
        return len(self.lines)

    def row_id(self, index: int) -> int:
        return self.lines[index]

    def pil(self, index: int) -> Image.Image:
        return open_image(str(self.root / self.images[index]))

    def encoded(self, index: int) -> bytes:
        """The image file's bytes (for decoding on the device)."""
        return (self.root / self.images[index]).read_bytes()


class CsvCaptionRows(CsvRows):
    def __init__(
        self,
        path: str | Path,
        image_column: str = "image",
        caption_column: str = "caption",
        delimiter: str = ",",
        max_samples: int | None = None,
        root: str | Path | None = None,
    ):
        super().__init__(path, image_column, caption_column, delimiter, max_samples, root)

    def caption(self, index: int) -> str:
        return self.values[index]


class CsvLabelRows(CsvRows):
    def __init__(
        self,
        path: str | Path,
        num_classes: int,
        image_column: str = "image",
        label_column: str = "label",
        delimiter: str = ",",
        max_samples: int | None = None,
        root: str | Path | None = None,
    ):
        super().__init__(path, image_column, label_column, delimiter, max_samples, root)
        self.labels: list[int] = []
        for line, value in zip(self.lines, self.values, strict=True):
            try:
                label = int(value)
            except ValueError:
                raise DataError(f"{self.path}: line {line}: label {value!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise DataError(f"{self.path}: line {line}: label {label} outside [0, {num_classes})")
            self.labels.append(label)

    def label(self, index: int) -> int:
        return self.labels[index]
