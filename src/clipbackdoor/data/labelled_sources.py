"""Labelled evaluation sets beyond Fashion-MNIST and plain CSVs: ImageNet-1K val, torchvision datasets."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from clipbackdoor.data.bad_rows import BadRow, DataError
from clipbackdoor.data.csv_source import CsvLabelRows, PathResolver
from clipbackdoor.data.transforms import open_image


class ImageNetRows:
    """Images under ``folder`` named by a labels file of ``<image> <class index>`` lines (the common val.txt).

    As in a CSV source, an image path must resolve (links followed) inside ``folder``: a ``../`` row, an
    absolute path elsewhere or a link pointing out is skipped and counted as a bad row, never opened.
    """

    def __init__(self, labels: str | Path, folder: str | Path | None, num_classes: int, max_samples: int | None):
        self.path = Path(labels)
        self.folder = Path(folder) if folder is not None else self.path.parent
        self.source = str(self.path)
        self.bad: list[BadRow] = []
        self.lines: list[int] = []
        self.images: list[str] = []
        self.labels: list[int] = []
        if not self.path.is_file():
            raise DataError(f"ImageNet labels file not found: {self.path}")
        inside = os.path.join(os.path.realpath(self.folder), "")
        resolve = PathResolver()
        for line, text in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if max_samples is not None and len(self.lines) >= max_samples:
                break
            parts = text.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{self.path}: line {line}: expected '<image> <class index>', got {text!r}")
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise DataError(f"{self.path}: line {line}: label {label} outside [0, {num_classes})")
            if not (target := resolve(os.path.join(self.folder, parts[0]))).startswith(inside):
                problem = f"image path {parts[0]!r} leaves the image folder {self.folder}: it resolves to {target}"
                self.bad.append(BadRow(self.source, line, problem))
                continue
            self.lines.append(line)
            self.images.append(parts[0])
            self.labels.append(label)
        if not self.lines:
            raise DataError(f"{self.path}: no labelled images")

    def __len__(self) -> int:
        return len(self.lines)

    def row_id(self, index: int) -> int:
        return self.lines[index]

    def pil(self, index: int) -> Image.Image:
        return open_image(str(self.folder / self.images[index]))

    def encoded(self, index: int) -> bytes:
        """The image file's bytes (a whole JPEG is decoded by torchvision, see ``decode_jpeg_resized``)."""
        return (self.folder / self.images[index]).read_bytes()

    def label(self, index: int) -> int:
        return self.labels[index]


def imagenet_rows(
    labels: str, folder: str | None, num_classes: int, max_samples: int | None
) -> ImageNetRows | CsvLabelRows:
    """CleanCLIP's ``labels.csv`` (image,label) or a ``<image> <label>`` text file."""
    if Path(labels).suffix == ".csv":
        return CsvLabelRows(labels, num_classes, max_samples=max_samples, root=folder)
    return ImageNetRows(labels, folder, num_classes, max_samples)


class ClassSubset:
    """The rows of ``rows`` whose class is among ``keep`` (class indices), labelled by position in ``keep``:
    zero-shot evaluation over a subset of the classes (the classifier holds only those)."""

    def __init__(self, rows: ImageNetRows | CsvLabelRows, keep: list[int]):
        position = {label: i for i, label in enumerate(keep)}
        self.rows, self.source, self.bad = rows, rows.source, rows.bad
        self.index = [i for i in range(len(rows)) if rows.label(i) in position]
        self.labels = [position[rows.label(i)] for i in self.index]
        if not self.index:
            raise DataError(f"{rows.source}: no image of the classes {keep}")

    def __len__(self) -> int:
        return len(self.index)

    def row_id(self, index: int) -> int:
        return self.rows.row_id(self.index[index])

    def pil(self, index: int) -> Image.Image:
        return self.rows.pil(self.index[index])

    def encoded(self, index: int) -> bytes:
        return self.rows.encoded(self.index[index])

    def label(self, index: int) -> int:
        return self.labels[index]


class TorchvisionRows:
    """A torchvision classification dataset on disk, read row by row; its ``classes`` are the class names."""

    def __init__(self, name: str, root: str, split: str, max_samples: int | None):
        import torchvision.datasets as tvd

        cls = getattr(tvd, name, None)
        if not isinstance(cls, type):
            raise DataError(f"data.eval.name: torchvision.datasets has no dataset {name!r}")
        try:
            self.dataset = cls(root, train=split == "train", download=False)
        except (RuntimeError, FileNotFoundError) as err:
            raise DataError(f"{name} not found under {root} ({err}); download it there first") from None
        self.classes = [str(c) for c in self.dataset.classes]
        self.source = f"torchvision:{name}:{root}"
        self.bad: list[BadRow] = []
        self.size = min(len(self.dataset), max_samples or len(self.dataset))

    def __len__(self) -> int:
        return self.size

    def row_id(self, index: int) -> int:
        return index

    def pil(self, index: int) -> Image.Image:
        return self.dataset[index][0]

    def label(self, index: int) -> int:
        return int(self.dataset[index][1])
