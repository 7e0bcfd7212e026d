"""Fashion-MNIST as image–caption pairs (training) and as a labelled zero-shot evaluation set.

The IDX files come from Debian's ``dataset-fashion-mnist`` package or any folder holding the four files
(gzipped or not, e.g. torchvision's ``FashionMNIST/raw``). Captions are drawn once per image, seeded, from
templates filled with the class name or a synonym, so each image has one fixed caption like a web pair.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from clipbackdoor.data.bad_rows import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

CLASSNAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

SYNONYMS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "top", "tee"),
    "trouser": ("trouser", "pair of trousers", "pair of pants"),
    "pullover": ("pullover", "sweater", "jumper"),
    "dress": ("dress", "gown"),
    "coat": ("coat", "jacket"),
    "sandal": ("sandal", "summer sandal"),
    "shirt": ("shirt", "blouse"),
    "sneaker": ("sneaker", "trainer", "running shoe"),
    "bag": ("bag", "handbag", "purse"),
    "ankle boot": ("ankle boot", "boot"),
}

CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a {} on a dark background.",
)

PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a {}.",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DataError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DataError(f"{path}: expected {expected} bytes of data for shape {shape}, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    hint = (
        "install Debian's dataset-fashion-mnist (make install does it where apt exists), or point the "
        "config's data.*.root at a folder holding the four IDX files"
    )
    raise DataError(f"Fashion-MNIST file {stem}(.gz) not found in {root}: {hint}")


def load_arrays(root: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] for one split."""
    folder = Path(root) if root else DEFAULT_ROOT
    images_stem, labels_stem = _FILES[split]
    images = _read_idx(_find(folder, images_stem))
    labels = _read_idx(_find(folder, labels_stem))
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels for split {split}")
    return images, labels


def draw_captions(labels: np.ndarray, templates: tuple[str, ...], use_synonyms: bool, seed: int) -> list[str]:
    """One caption per image, reproducible from ``seed``."""
    rng = np.random.default_rng([seed, 0xCAB])
    template_ids = rng.integers(len(templates), size=len(labels))
    synonym_draws = rng.random(len(labels))
    captions = []
    for label, t, u in zip(labels.tolist(), template_ids.tolist(), synonym_draws.tolist(), strict=True):
        names = SYNONYMS[CLASSNAMES[label]] if use_synonyms else (CLASSNAMES[label],)
        captions.append(templates[t].format(names[int(u * len(names))]))
    return captions


class FashionMNISTRows:
    """Rows of one split, in memory; ``caption`` is set for pair datasets, ``label`` always works."""

    def __init__(self, root: str | Path | None, split: str, max_samples: int | None, captions: list[str] | None = None):
        images, labels = load_arrays(root, split)
        if max_samples is not None:
            images, labels = images[:max_samples], labels[:max_samples]
        self.images, self.labels = images, labels
        self.source = f"fashion-mnist/{split}"
        self.bad: list = []
        self.captions = captions

    def __len__(self) -> int:
        return len(self.labels)

    def row_id(self, index: int) -> int:
        return index

    def pil(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index], mode="L")

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def caption(self, index: int) -> str:
        assert self.captions is not None, "captions were not drawn for this split"
        return self.captions[index]
