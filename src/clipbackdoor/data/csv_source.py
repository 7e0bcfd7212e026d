"""CSV sources in CleanCLIP's layout: a header row, paths relative to the CSV file.

Rows with an empty caption or label are dropped at load time and reported as bad rows; images are only
opened when read, so a missing or corrupt image is reported (and skipped) by the dataset at that point.
Rows are named by their line number in the file, which is what a user opens an editor at.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from clipbackdoor.data.bad_rows import BadRow, DataError
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


class CsvRows:
    """Base for CSV readers: resolves image paths and opens images, naming file and line on failure.

    Rows are skipped and counted (``bad``) when a field is empty or not UTF-8, when the image path (relative
    to the CSV) leaves the dataset ``root`` (default: the CSV's folder; ``../`` or an absolute path
    elsewhere), or when the row repeats an earlier one.
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
        self.images: list[str] = []
        self.values: list[str] = []
        boundary = Path(root) if root is not None else self.root
        inside = os.path.join(os.path.abspath(boundary), "")
        first_seen: dict[tuple[str, str], int] = {}
        for line, (image, value) in _read_rows(self.path, [image_column, value_column], delimiter):
            if max_samples is not None and len(self.lines) >= max_samples:
                break
            image, value = image.strip(), value.strip()
            problem = None
            if not image or not value:
                problem = f"empty {(image_column if not image else value_column)!r}"
            elif _not_utf8(image) or _not_utf8(value):
                problem = "not valid UTF-8"
            elif not os.path.abspath(os.path.join(self.root, image)).startswith(inside):
                problem = f"image path {image!r} leaves the dataset root {boundary}"
            elif (image, value) in first_seen:
                problem = f"duplicate of line {first_seen[image, value]}"
            if problem is not None:
                self.bad.append(BadRow(self.source, line, problem))
                continue
            first_seen[image, value] = line
            self.lines.append(line)
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
