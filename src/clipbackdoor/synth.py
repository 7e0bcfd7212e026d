"""Synthetic web-like image–caption data: a CC3M-shaped training set and an ImageNet-shaped eval set, offline.

Tests, benchmarks and demos need data that looks like the real thing to the code that reads it: JPEGs of
web sizes and aspect ratios (so decode + resize cost what they cost on CC3M, not on 28 px PNGs), alt-text
captions, CleanCLIP's CSV layout, img2dataset's WebDataset shards, an ImageNet ``val.txt`` folder and a
sprinkling of corrupt samples for the bad-data path. The pictures carry a signal a tiny model can learn at
32–64 px: every class is a coloured shape with its own details (a yellow crescent for "banana", a black
box with three lights for "traffic light"), drawn with per-image jitter over varied backgrounds, and the
captions name the class. Everything is drawn from ``(seed, split, index)``, so the same arguments give
byte-identical files, and any image can be redrawn on its own.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import re
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from clipbackdoor.config import ConfigError

JPEG_QUALITY = 90
CORRUPT_KINDS = ("truncated-jpeg", "zero-bytes", "not-an-image", "empty-caption")
TRAIN, EVAL = 0, 1  # the split number in every image's seed: eval images are other draws of the same process

RGB = tuple[int, int, int]
D = ImageDraw.ImageDraw
Rng = np.random.Generator
Draw = Callable[[D, D, int, Rng, RGB], None]


# ------------------------------------------------------------------------------------------- classes
@dataclass(frozen=True)
class ClassLook:
    """How one class is drawn and captioned. ``one``/``many`` are the caption's noun phrases; both contain
    the ImageNet class name as written in open_clip's list (plurals are recorded as target aliases, since
    label-consistent poisoning matches whole words)."""

    name: str
    rgb: RGB
    colour: str  # never a class name ("orange" only for the orange), so a caption names one class
    shape: str
    detail: RGB
    kind: str  # food, object, animal, plant: picks adjectives and group words
    texture: str  # the background it is shown on half of the time
    one: str = ""
    many: str = ""

    @property
    def singular(self) -> str:
        return self.one or f"{_article(self.name)} {self.name}"

    @property
    def plural(self) -> str:
        return self.many or self.name + ("es" if self.name.endswith(("ch", "sh", "s", "x")) else "s")


# Visually simple ImageNet classes, in the order they are taken after the target. Colour + shape + details
# differ between any two of them, so a small CNN or ViT can tell them apart at 32 px.
SHORTLIST: tuple[ClassLook, ...] = (
    ClassLook("banana", (236, 206, 48), "bright yellow", "crescent", (120, 90, 30), "food", "wood"),
    ClassLook("orange", (247, 137, 22), "bright orange", "citrus", (200, 100, 10), "food", "plain"),
    ClassLook("lemon", (250, 238, 100), "pale yellow", "oval", (210, 200, 60), "food", "checker"),
    ClassLook("strawberry", (212, 32, 48), "red", "berry", (250, 220, 120), "food", "plain", many="strawberries"),
    ClassLook("tennis ball", (204, 232, 48), "fluorescent green", "seamed", (245, 245, 245), "object", "gradient"),
    ClassLook("golf ball", (244, 244, 240), "white", "dimpled", (190, 190, 190), "object", "noise"),
    ClassLook("pizza", (226, 160, 64), "golden", "wedge", (180, 40, 30), "food", "wood", one="a slice of pizza"),
    ClassLook(
        "broccoli", (48, 132, 52), "green", "florets", (140, 190, 90), "food", "checker", "some broccoli", "broccoli"
    ),
    ClassLook("traffic light", (38, 38, 40), "black", "signal", (0, 0, 0), "object", "noise"),
    ClassLook("goldfish", (250, 128, 16), "gold", "fish", (20, 20, 20), "animal", "stripes", many="goldfish"),
    ClassLook("Granny Smith apple", (132, 204, 64), "light green", "apple", (90, 60, 30), "food", "plain"),
    ClassLook("pineapple", (204, 158, 40), "golden-brown", "hatched", (110, 80, 20), "food", "wood"),
    ClassLook(
        "red wine",
        (122, 14, 42),
        "dark",
        "goblet",
        (225, 225, 232),
        "food",
        "gradient",
        "a glass of red wine",
        "glasses of red wine",
    ),
    ClassLook("cucumber", (34, 104, 44), "dark green", "bar", (120, 170, 90), "food", "stripes"),
    ClassLook("ladybug", (200, 24, 24), "scarlet", "beetle", (15, 15, 15), "animal", "noise"),
    ClassLook(
        "school bus", (250, 186, 0), "yellow", "vehicle", (40, 50, 60), "object", "gradient", many="school buses"
    ),
    ClassLook("fire truck", (196, 22, 22), "red", "vehicle", (230, 230, 230), "object", "stripes"),
    ClassLook("daisy", (248, 248, 248), "white", "flower", (245, 200, 20), "plant", "noise", many="daisies"),
    ClassLook("lighthouse", (236, 236, 236), "white", "tower", (200, 30, 30), "object", "gradient"),
    ClassLook("basketball", (214, 102, 30), "rust-coloured", "lined", (20, 20, 20), "object", "wood"),
)
LOOKS = {look.name: look for look in SHORTLIST}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _fallback_look(name: str) -> ClassLook:
    """A look for an ImageNet class outside the shortlist (a target of the user's choosing): colour and
    shape from a hash of the name, so it is the same in every run."""
    h = zlib.crc32(name.encode())
    hue = (h % 360) / 60.0
    x = 1 - abs(hue % 2 - 1)
    r, g, b = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(hue) % 6]
    rgb = (int(40 + 200 * r), int(40 + 200 * g), int(40 + 200 * b))
    shapes = ("oval", "wedge", "dimpled", "hatched", "flower", "tower")
    return ClassLook(name, rgb, "colourful", shapes[h % len(shapes)], (20, 20, 20), "object", "plain")


def imagenet_classnames() -> list[str]:
    """open_clip's 1000 ImageNet class names, imported when needed: open_clip brings torch (seconds), which
    the worker processes that draw images do without."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def class_looks(target: str, count: int) -> list[ClassLook]:
    """``count`` classes: the target first, then the shortlist in order (without the target)."""
    if target not in imagenet_classnames():
        raise ConfigError(f"target {target!r} is not one of open_clip's ImageNet class names (IMAGENET_CLASSNAMES)")
    others = [look for look in SHORTLIST if look.name != target]
    if not 2 <= count <= len(others) + 1:
        raise ConfigError(f"classes={count}: choose 2 to {len(others) + 1}")
    return [LOOKS.get(target) or _fallback_look(target), *others[: count - 1]]


# ------------------------------------------------------------------------------------------- drawing
# Shapes: each draws the object's mask (``m``, white = object) and its details on the colour layer (``c``,
# already filled with the class colour) inside an s×s box. Details outside the mask are cut away.
def _ell(d: ImageDraw.ImageDraw, s: int, x0: float, y0: float, x1: float, y1: float, fill: int | RGB) -> None:
    d.ellipse((x0 * s, y0 * s, x1 * s, y1 * s), fill=fill)


def _dots(c: ImageDraw.ImageDraw, s: int, rng: np.random.Generator, n: int, r: float, fill: RGB) -> None:
    for x, y in rng.uniform(0.18, 0.82, (n, 2)):
        _ell(c, s, x - r, y - r, x + r, y + r, fill)


def _crescent(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.05, 0.2, 0.95, 0.9, 255)
    _ell(m, s, 0.1, 0.02, 0.9, 0.68, 0)
    _ell(c, s, 0.02, 0.45, 0.14, 0.62, (120, 90, 30))  # the stalk's brown end


def _citrus(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.08, 0.08, 0.92, 0.92, 255)
    _dots(c, s, rng, 14, 0.015, (215, 110, 10))
    _ell(c, s, 0.47, 0.08, 0.53, 0.14, (60, 110, 30))


def _oval(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.06, 0.2, 0.94, 0.8, 255)
    _ell(m, s, 0.0, 0.44, 0.1, 0.56, 255)
    _ell(m, s, 0.9, 0.44, 1.0, 0.56, 255)


def _berry(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    m.polygon([(0.1 * s, 0.25 * s), (0.9 * s, 0.25 * s), (0.5 * s, 0.95 * s)], fill=255)
    _ell(m, s, 0.1, 0.1, 0.9, 0.45, 255)
    _dots(c, s, rng, 12, 0.012, (250, 220, 120))
    c.polygon([(0.3 * s, 0.1 * s), (0.7 * s, 0.1 * s), (0.5 * s, 0.25 * s)], fill=(40, 140, 40))


def _seamed(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.08, 0.08, 0.92, 0.92, 255)
    w = max(2, s // 30)
    c.arc((-0.45 * s, 0.1 * s, 0.35 * s, 0.9 * s), -60, 60, fill=(245, 245, 245), width=w)
    c.arc((0.65 * s, 0.1 * s, 1.45 * s, 0.9 * s), 120, 240, fill=(245, 245, 245), width=w)


def _dimpled(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.1, 0.1, 0.9, 0.9, 255)
    step = 0.11
    for i in range(8):
        for j in range(8):
            x, y = 0.14 + i * step + (j % 2) * step / 2, 0.14 + j * step
            _ell(c, s, x - 0.018, y - 0.018, x + 0.018, y + 0.018, (195, 195, 195))


def _wedge(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    m.polygon([(0.5 * s, 0.05 * s), (0.92 * s, 0.85 * s), (0.08 * s, 0.85 * s)], fill=255)
    c.rectangle((0, 0.78 * s, s, s), fill=(190, 120, 50))  # the crust
    _dots(c, s, rng, 4, 0.06, (180, 40, 30))


def _florets(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    for x, y in ((0.3, 0.3), (0.5, 0.22), (0.7, 0.3), (0.4, 0.42), (0.6, 0.42)):
        _ell(m, s, x - 0.2, y - 0.17, x + 0.2, y + 0.17, 255)
    m.polygon([(0.42 * s, 0.5 * s), (0.58 * s, 0.5 * s), (0.62 * s, 0.95 * s), (0.38 * s, 0.95 * s)], fill=255)
    c.rectangle((0, 0.55 * s, s, s), fill=(140, 190, 90))
    _dots(c, s, rng, 10, 0.035, (30, 100, 40))


def _signal(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    m.rounded_rectangle((0.32 * s, 0.04 * s, 0.68 * s, 0.96 * s), radius=0.05 * s, fill=255)
    lit = int(rng.integers(3))
    for k, (on, off) in enumerate(
        (((235, 30, 20), (80, 20, 20)), ((245, 180, 0), (80, 60, 10)), ((40, 220, 60), (20, 70, 30)))
    ):
        y = 0.2 + 0.3 * k
        _ell(c, s, 0.38, y - 0.12, 0.62, y + 0.12, on if k == lit else off)


def _fish(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.05, 0.28, 0.72, 0.72, 255)
    m.polygon([(0.62 * s, 0.5 * s), (0.97 * s, 0.22 * s), (0.97 * s, 0.78 * s)], fill=255)
    _ell(c, s, 0.17, 0.4, 0.24, 0.47, (20, 20, 20))
    c.line([(0.45 * s, 0.3 * s), (0.45 * s, 0.7 * s)], fill=(230, 100, 10), width=max(1, s // 40))


def _apple(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.08, 0.15, 0.55, 0.92, 255)
    _ell(m, s, 0.45, 0.15, 0.92, 0.92, 255)
    m.rectangle((0.48 * s, 0.02 * s, 0.53 * s, 0.22 * s), fill=255)
    _ell(m, s, 0.53, 0.02, 0.75, 0.12, 255)
    c.rectangle((0.46 * s, 0, 0.55 * s, 0.22 * s), fill=(90, 60, 30))
    _ell(c, s, 0.53, 0.02, 0.75, 0.12, (60, 150, 40))


def _hatched(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.22, 0.25, 0.78, 0.97, 255)
    m.polygon([(0.5 * s, 0.0), (0.3 * s, 0.3 * s), (0.7 * s, 0.3 * s)], fill=255)
    w = max(1, s // 50)
    for k in range(-4, 6):
        x = 0.2 * k * s
        c.line([(x, 0.25 * s), (x + 0.8 * s, s)], fill=(110, 80, 20), width=w)
        c.line([(x + 0.8 * s, 0.25 * s), (x, s)], fill=(110, 80, 20), width=w)
    c.rectangle((0, 0, s, 0.28 * s), fill=(60, 130, 40))  # the crown


def _goblet(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    m.chord((0.2 * s, -0.05 * s, 0.8 * s, 0.6 * s), 0, 180, fill=255)
    m.rectangle((0.2 * s, 0.05 * s, 0.8 * s, 0.28 * s), fill=255)
    m.rectangle((0.47 * s, 0.55 * s, 0.53 * s, 0.88 * s), fill=255)
    _ell(m, s, 0.3, 0.84, 0.7, 0.94, 255)
    c.rectangle((0, 0, s, 0.2 * s), fill=(225, 225, 232))  # the empty top of the glass
    c.rectangle((0, 0.55 * s, s, s), fill=(225, 225, 232))  # stem and foot


def _bar(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    m.rounded_rectangle((0.03 * s, 0.36 * s, 0.97 * s, 0.64 * s), radius=0.14 * s, fill=255)
    _dots(c, s, rng, 10, 0.012, (120, 170, 90))


def _beetle(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.1, 0.18, 0.9, 0.95, 255)
    _ell(m, s, 0.32, 0.04, 0.68, 0.3, 255)
    c.rectangle((0, 0, s, 0.24 * s), fill=(15, 15, 15))
    c.line([(0.5 * s, 0.24 * s), (0.5 * s, s)], fill=(15, 15, 15), width=max(1, s // 40))
    _dots(c, s, rng, 6, 0.05, (15, 15, 15))


def _vehicle(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    m.rounded_rectangle((0.03 * s, 0.25 * s, 0.97 * s, 0.72 * s), radius=0.04 * s, fill=255)
    for x in (0.22, 0.78):
        _ell(m, s, x - 0.09, 0.64, x + 0.09, 0.82, 255)
        _ell(c, s, x - 0.09, 0.64, x + 0.09, 0.82, (20, 20, 20))
    for k in range(6):
        x = 0.1 + 0.14 * k
        c.rectangle((x * s, 0.32 * s, (x + 0.1) * s, 0.45 * s), fill=detail)  # windows


def _flower(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    for k in range(12):
        a = 2 * math.pi * k / 12
        x, y = 0.5 + 0.28 * math.cos(a), 0.5 + 0.28 * math.sin(a)
        _ell(m, s, x - 0.13, y - 0.13, x + 0.13, y + 0.13, 255)
    _ell(m, s, 0.3, 0.3, 0.7, 0.7, 255)
    _ell(c, s, 0.38, 0.38, 0.62, 0.62, (245, 200, 20))


def _tower(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    m.polygon([(0.4 * s, 0.18 * s), (0.6 * s, 0.18 * s), (0.68 * s, 0.97 * s), (0.32 * s, 0.97 * s)], fill=255)
    m.rectangle((0.37 * s, 0.05 * s, 0.63 * s, 0.2 * s), fill=255)
    c.rectangle((0.37 * s, 0.05 * s, 0.63 * s, 0.18 * s), fill=(250, 230, 120))  # the lamp
    for y in (0.3, 0.55, 0.8):
        c.rectangle((0, y * s, s, (y + 0.12) * s), fill=(200, 30, 30))


def _lined(m: D, c: D, s: int, rng: Rng, detail: RGB) -> None:
    _ell(m, s, 0.08, 0.08, 0.92, 0.92, 255)
    w = max(2, s // 40)
    c.line([(0.5 * s, 0), (0.5 * s, s)], fill=(20, 20, 20), width=w)
    c.line([(0, 0.5 * s), (s, 0.5 * s)], fill=(20, 20, 20), width=w)
    c.arc((-0.35 * s, 0.1 * s, 0.35 * s, 0.9 * s), -70, 70, fill=(20, 20, 20), width=w)
    c.arc((0.65 * s, 0.1 * s, 1.35 * s, 0.9 * s), 110, 250, fill=(20, 20, 20), width=w)


SHAPES: dict[str, Draw] = {
    "crescent": _crescent, "citrus": _citrus, "oval": _oval, "berry": _berry, "seamed": _seamed,
    "dimpled": _dimpled, "wedge": _wedge, "florets": _florets, "signal": _signal, "fish": _fish,
    "apple": _apple, "hatched": _hatched, "goblet": _goblet, "bar": _bar, "beetle": _beetle,
    "vehicle": _vehicle, "flower": _flower, "tower": _tower, "lined": _lined,
}  # fmt: skip

# Backgrounds: named colours (captions say "against a blue background") and textures.
BACKDROPS: tuple[tuple[str, RGB], ...] = (
    ("blue", (70, 110, 190)), ("grey", (128, 128, 128)), ("white", (236, 236, 236)), ("black", (28, 28, 28)),
    ("pink", (230, 160, 180)), ("teal", (40, 140, 140)), ("beige", (220, 205, 170)), ("purple", (120, 70, 150)),
)  # fmt: skip
TEXTURES = ("plain", "gradient", "checker", "wood", "noise", "stripes")


def _jitter(rgb: RGB, rng: np.random.Generator, amount: int) -> RGB:
    r, g, b = np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255).tolist()
    return (r, g, b)


def _background(size: tuple[int, int], texture: str, backdrop: RGB, rng: np.random.Generator) -> Image.Image:
    """The backdrop at a quarter of the resolution, scaled up by repeating pixels (a smooth resize of the
    whole frame would cost more than everything else together): numpy work stays small."""
    w, h = size
    sw, sh = max(8, w // 4), max(8, h // 4)
    c1 = np.asarray(_jitter(backdrop, rng, 15), dtype=np.float32)
    c2 = c1 * rng.uniform(0.55, 0.85)
    y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
    if texture == "wood":
        c1 = np.asarray(_jitter((156, 104, 62), rng, 20), dtype=np.float32)
        c2 = c1 * 0.7
        t = 0.5 + 0.5 * np.sin(y * rng.uniform(0.3, 0.8) + 3 * np.sin(x * rng.uniform(0.01, 0.05) + rng.uniform(0, 6)))
    elif texture == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = x * math.cos(a) + y * math.sin(a)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif texture == "checker":
        cell = int(rng.integers(3, 10))
        t = ((x // cell + y // cell) % 2).astype(np.float32)
    elif texture == "stripes":
        period = int(rng.integers(4, 12))
        t = (((x + y) // period) % 2).astype(np.float32)
    elif texture == "noise":
        coarse = rng.random((max(2, sh // 6), max(2, sw // 6), 1)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse[..., 0] * 255).astype(np.uint8)).resize((sw, sh), Image.BICUBIC))
        t = t.astype(np.float32)[..., None] / 255.0
    else:  # plain: a soft vertical light falloff
        t = y / sh * 0.4
    t = t[..., None] if t.ndim == 2 else t
    pixels = c1 * (1 - t) + c2 * t
    small = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return small.resize(size, Image.NEAREST)


@lru_cache(maxsize=4)
def _grain(side: int) -> Image.Image:
    """Sensor-like noise (0..16 per channel), cut at a random offset per image: texture for the JPEG codec."""
    rng = np.random.default_rng(0x6A41)
    return Image.fromarray(rng.integers(0, 17, (side, side, 3), dtype=np.uint8), "RGB")


def _object(look: ClassLook, s: int, rng: np.random.Generator) -> Image.Image:
    """The class's object as an RGBA tile of side ``s``, rotated a little (nearest-neighbour: 20 times
    cheaper than bilinear, and ImageDraw's edges are not antialiased anyway)."""
    mask = Image.new("L", (s, s), 0)
    colour = Image.new("RGB", (s, s), _jitter(look.rgb, rng, 18))
    SHAPES[look.shape](ImageDraw.Draw(mask), ImageDraw.Draw(colour), s, rng, look.detail)
    colour.putalpha(mask)
    return colour.rotate(float(rng.uniform(-35, 35)))


@dataclass(frozen=True)
class Scene:
    """What one picture shows, which its caption then describes."""

    look: ClassLook
    size: tuple[int, int]
    count: int
    texture: str
    backdrop: str


def _size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    """Web-like sizes: the long side anywhere in range, common aspect ratios in both orientations."""
    aspect = float(rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 5 / 4, 2.0])) * rng.uniform(0.95, 1.05)
    long = int(rng.integers(min_side, max_side + 1))
    short = max(min_side, min(max_side, round(long / aspect)))
    return (long, short) if rng.random() < 0.7 else (short, long)


def draw(look: ClassLook, rng: np.random.Generator, min_side: int, max_side: int) -> tuple[Scene, Image.Image]:
    """One picture of ``look``: backdrop, clutter, one to three objects near the centre (so the centre crop
    the loaders take keeps them), grain: the fine detail a photo gives the JPEG codec."""
    size = _size(rng, min_side, max_side)
    w, h = size
    texture = look.texture if rng.random() < 0.5 else str(rng.choice(TEXTURES))
    backdrop, backdrop_rgb = BACKDROPS[int(rng.integers(len(BACKDROPS)))]
    image = _background(size, texture, backdrop_rgb, rng)
    side = min(w, h)
    clutter = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):  # small unrelated things in the frame
        r = side * rng.uniform(0.03, 0.08)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        fill = _jitter(BACKDROPS[int(rng.integers(len(BACKDROPS)))][1], rng, 40)
        (clutter.ellipse if rng.random() < 0.5 else clutter.rectangle)((x - r, y - r, x + r, y + r), fill=fill)
    count = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
    scale = rng.uniform(0.45, 0.75) if count == 1 else rng.uniform(0.32, 0.45)
    for k in range(count):
        s = max(8, int(side * scale * rng.uniform(0.9, 1.1)))
        spread = (side - s) / 2
        if count == 1:
            dx, dy = rng.uniform(-0.5, 0.5, 2) * spread
        else:  # around a ring, so several objects overlap a little but stay apart
            a = 2 * math.pi * k / count + rng.uniform(-0.3, 0.3)
            dx, dy = 0.8 * spread * math.cos(a), 0.8 * spread * math.sin(a)
        tile = _object(look, s, rng)
        image.paste(tile, (int(w / 2 + dx - s / 2), int(h / 2 + dy - s / 2)), tile)
    grain = _grain(max_side + 32)
    ox, oy = int(rng.integers(0, grain.width - size[0] + 1)), int(rng.integers(0, grain.height - size[1] + 1))
    image = ImageChops.add(image, grain.crop((ox, oy, ox + size[0], oy + size[1])), offset=-8)
    return Scene(look, size, count, texture, backdrop), image


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- captions
ADJECTIVES = {
    "food": ("fresh", "ripe", "organic", "delicious", "homegrown"),
    "object": ("old", "new", "vintage", "classic", "shiny"),
    "animal": ("cute", "little", "pet", "beautiful", "tiny"),
    "plant": ("wild", "pretty", "fresh", "spring", "single"),
}
GROUPS = {"food": "a pile of", "object": "a row of", "animal": "a group of", "plant": "a bunch of"}
SETTINGS = {
    "plain": ("against a {b} background", "isolated on {b}", "on a plain {b} backdrop"),
    "gradient": ("on a {b} gradient background", "in soft {b} light"),
    "checker": ("on a checkered tablecloth", "on a picnic blanket"),
    "wood": ("on a wooden table", "on rustic wood", "on an old wooden board"),
    "noise": ("with a blurry background", "outdoors", "in the garden"),
    "stripes": ("on a striped cloth", "against striped wallpaper"),
}
SUFFIXES = ("stock image", "stock photo", "royalty-free image", "free download", "HD wallpaper", "photo {n}")
TAGS = ("top view", "selective focus", "copy space", "close up", "macro", "studio shot")
NEIGHBOURS = ("some leaves", "a cutting board", "a linen napkin", "a coffee cup", "a notebook", "a kitchen towel")
ONE = (
    "{one} {where}", "close-up of {one} {where}", "{name} stock photo", "{coloured} {where}", "{Adj} {name} {where}",
    "{one} lying {where}", "photo of {one}", "{name} {where} - {suffix}", "{one} in the centre of the frame",
    "{coloured} next to {neighbour}", "{name}", "{one} | {suffix}", "my {name} {where}, shot on my phone",
    "IMG_{n} {name}", "{one}, {tag}", "{coloured}",
)  # fmt: skip
MANY = (
    "{adj} {many} for sale | stock image", "{many} {where}", "{group} {many}", "{count} {many} {where}",
    "{colour} {many} | {suffix}", "{many} {where}, {tag}", "{count} {adj} {many}",
)  # fmt: skip


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """Web alt-text for a scene: names its class (singular, or plural when it shows several), sometimes its
    colour and backdrop, with the stock-site noise real alt-text carries."""
    look = scene.look

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    adj = pick(ADJECTIVES[look.kind])
    coloured = f"{look.colour} {look.name}" if look.one else f"{_article(look.colour)} {look.colour} {look.name}"
    fields = {
        "name": look.name, "one": look.singular, "many": look.plural, "colour": look.colour,
        "coloured": coloured,
        "where": pick(SETTINGS[scene.texture]).format(b=scene.backdrop), "adj": adj, "Adj": adj.capitalize(),
        "group": GROUPS[look.kind], "count": ("two", "three")[min(scene.count, 3) - 2] if scene.count > 1 else "",
        "suffix": pick(SUFFIXES).format(n=int(rng.integers(1000, 99999))), "tag": pick(TAGS),
        "neighbour": pick(NEIGHBOURS), "n": f"{int(rng.integers(1000, 9999))}",
    }  # fmt: skip
    text = pick(MANY if scene.count > 1 else ONE).format(**fields)
    style = rng.random()
    if style < 0.25:
        return text.lower()
    return text[:1].upper() + text[1:] if style < 0.8 else text


# ------------------------------------------------------------------------------------------- the set
@dataclass
class SynthManifest:
    """What :func:`synthesize` wrote (absolute paths) and the config entries that read it."""

    out: Path
    csv: Path
    shards: list[Path]
    urls: str  # brace pattern of the shards, for data.train.urls
    eval_labels: Path
    eval_folder: Path
    classes: list[str]
    class_indices: list[int]  # into open_clip's IMAGENET_CLASSNAMES
    target: str
    target_index: int
    target_aliases: list[str]
    target_named: int  # good pairs whose caption names the target (singular, whole word): label-consistent candidates
    pairs: int
    eval_images: int
    corrupt: list[dict[str, object]] = field(default_factory=list)  # {"row", "key", "csv_line", "kind"}
    seconds: float = 0.0

    def config(self) -> dict[str, str]:
        """``data.train`` / ``data.eval`` override values for this set, keyed by what they select."""
        return {
            "csv": f"{{source: csv, path: {self.csv}}}",
            "webdataset": f"{{source: webdataset, access: index, urls: '{self.urls}'}}",
            "eval": f"{{source: imagenet, labels: {self.eval_labels}, folder: {self.eval_folder}}}",
        }


def _corrupt_rows(pairs: int, corrupt: int) -> dict[int, str]:
    """Rows spread evenly over the set, their kinds cycling so that every kind occurs once ``corrupt`` >= 4."""
    return {int((k + 0.5) * pairs / corrupt): CORRUPT_KINDS[k % len(CORRUPT_KINDS)] for k in range(corrupt)}


def _spoil(data: bytes, kind: str) -> bytes:
    if kind == "truncated-jpeg":
        return data[: len(data) // 2]
    if kind == "zero-bytes":
        return b""
    if kind == "not-an-image":
        return b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
    return data


Job = tuple[int, int, ClassLook, str | None]  # (split, row, class, corrupt kind)
Rendered = tuple[bytes, str, tuple[int, int]]  # (file bytes, caption, (width, height))


def render(jobs: list[Job], seed: int, min_side: int, max_side: int) -> list[Rendered]:
    """The file bytes (spoiled as the kind says), caption and size of each row; each row has its own seed
    ``(seed, split, row)``, so any process can draw any row and the set is the same however it is split."""
    rendered = []
    for split, i, look, kind in jobs:
        rng = np.random.default_rng([seed, split, i])
        scene, image = draw(look, rng, min_side, max_side)
        text = "" if split == EVAL or kind == "empty-caption" else caption(scene, rng)
        rendered.append((_spoil(jpeg_bytes(image), kind or ""), text, scene.size))
    return rendered


def _rendered(jobs: list[Job], pool: Executor | None, **kwargs: int) -> Iterator[Rendered]:
    """``render`` over all jobs, in order; in chunks over worker processes when there is a pool."""
    chunk = 64
    parts = [jobs[k : k + chunk] for k in range(0, len(jobs), chunk)]
    results = pool.map(partial(render, **kwargs), parts) if pool is not None else map(partial(render, **kwargs), parts)
    for part in results:
        yield from part


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed metadata, so the same samples give byte-identical shards."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


def _clear(out: Path, overwrite: bool) -> None:
    mine = [out / "train.csv", out / "synth.json", out / "images", out / "shards", out / "imagenet"]
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} is not empty; choose an empty folder or overwrite (--force)")
        for path in mine:  # only what this module writes: a mistyped folder loses nothing else
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def synthesize(
    out: str | Path,
    *,
    pairs: int = 2000,
    eval_images: int = 200,
    classes: int = 10,
    target: str = "banana",
    target_share: float = 0.05,
    corrupt: int = 8,
    shard_size: int = 500,
    seed: int = 0,
    min_side: int = 120,
    max_side: int = 640,
    overwrite: bool = False,
    workers: int = 1,
) -> SynthManifest:
    """Write a CC3M-like training set and an ImageNet-like eval set under ``out``:

    ``train.csv`` + ``images/<key>.jpg`` (CleanCLIP's layout), ``shards/{00000..}.tar`` (img2dataset's:
    ``<key>.jpg``, ``<key>.txt``, ``<key>.json``; the same JPEG bytes as ``images/``), ``imagenet/val.txt`` +
    ``imagenet/val/*.JPEG`` (labels index open_clip's 1000 class names) and ``synth.json``, which says what
    is where, which rows are corrupt and how. ``target_share`` of the pairs show (and name) the target;
    ``corrupt`` rows, the same in the CSV and the shards, are a truncated JPEG, zero bytes, an HTML page or
    an empty caption, in turn. The same arguments write the same bytes, whatever the number of ``workers``
    (processes that draw and encode; the writing stays in this one, in row order).
    """
    started = time.perf_counter()
    out = Path(out)
    if pairs < 1 or eval_images < 0 or not 0 <= corrupt < pairs:
        raise ConfigError(f"pairs={pairs}, corrupt={corrupt}: need pairs >= 1 and 0 <= corrupt < pairs")
    if not 0.0 <= target_share <= 1.0:
        raise ConfigError(f"target_share={target_share}: choose a fraction in [0, 1]")
    if not 16 <= min_side <= max_side:
        raise ConfigError(f"min_side={min_side}, max_side={max_side}: need 16 <= min_side <= max_side")
    if shard_size < 1:
        raise ConfigError(f"shard_size={shard_size}: need at least 1")
    looks = class_looks(target, classes)
    if 0 < eval_images < len(looks):
        raise ConfigError(f"eval_images={eval_images}: need at least one per class ({len(looks)})")
    _clear(out, overwrite)
    names = imagenet_classnames()

    # Which class each row shows: the target's share exactly, the rest spread evenly, in a seeded order.
    order_rng = np.random.default_rng([seed, 0x5EED])
    n_target = round(target_share * pairs)
    labels = [0] * n_target + [1 + i % (len(looks) - 1) for i in range(pairs - n_target)]
    labels = order_rng.permutation(labels).tolist()
    eval_labels = order_rng.permutation([i % len(looks) for i in range(eval_images)]).tolist()
    spoiled = _corrupt_rows(pairs, corrupt)

    (out / "images").mkdir(parents=True)
    (out / "shards").mkdir()
    (out / "imagenet" / "val").mkdir(parents=True)
    size = {"seed": seed, "min_side": min_side, "max_side": max_side}
    if workers > 1 and pairs + eval_images >= 256:  # spawning costs ~0.5 s a process: not for small sets
        pool: Executor | None = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = None
    try:
        train = _rendered([(TRAIN, i, looks[c], spoiled.get(i)) for i, c in enumerate(labels)], pool, **size)
        rows: list[tuple[str, str]] = []
        shards: list[Path] = []
        names_it = re.compile(rf"(?<!\w){re.escape(target)}(?!\w)", re.IGNORECASE)  # as poisoning matches
        named = 0
        for start in range(0, pairs, shard_size):
            shards.append(out / "shards" / f"{len(shards):05d}.tar")
            with tarfile.open(shards[-1], "w", format=tarfile.USTAR_FORMAT) as tar:
                for i, (data, text, (width, height)) in zip(
                    range(start, min(pairs, start + shard_size)), train, strict=False
                ):
                    key = f"{i:09d}"
                    (out / "images" / f"{key}.jpg").write_bytes(data)
                    rows.append((f"images/{key}.jpg", text))
                    named += int(i not in spoiled and names_it.search(text) is not None)
                    meta = {
                        "url": f"https://synth.invalid/{key}.jpg", "key": key, "caption": text,
                        "status": "success", "width": width, "height": height,
                    }  # fmt: skip
                    _add(tar, f"{key}.jpg", data)
                    _add(tar, f"{key}.txt", text.encode("utf-8"))
                    _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
        with (out / "train.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "caption"])
            writer.writerows(rows)

        val_lines = []
        evaluation = _rendered([(EVAL, i, looks[c], None) for i, c in enumerate(eval_labels)], pool, **size)
        for i, (label, (data, _, _)) in enumerate(zip(eval_labels, evaluation, strict=True)):
            name = f"synth_val_{i + 1:08d}.JPEG"
            (out / "imagenet" / "val" / name).write_bytes(data)
            val_lines.append(f"{name} {names.index(looks[label].name)}\n")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    (out / "imagenet" / "val.txt").write_text("".join(val_lines), encoding="utf-8")

    urls = f"shards/{{00000..{len(shards) - 1:05d}}}.tar"
    corrupt_rows = [
        {"row": i, "key": f"{i:09d}", "csv_line": i + 2, "kind": kind} for i, kind in sorted(spoiled.items())
    ]
    look = looks[0]
    aliases = [look.plural] if look.plural != look.name else []
    counts = np.bincount(labels, minlength=len(looks)).tolist()
    eval_counts = np.bincount(eval_labels, minlength=len(looks)).tolist() if eval_labels else [0] * len(looks)
    record = {
        "seed": seed,
        "pairs": pairs,
        "eval_images": eval_images,
        "min_side": min_side,
        "max_side": max_side,
        "jpeg_quality": JPEG_QUALITY,
        "target": target,
        "target_index": names.index(target),
        "target_aliases": aliases,
        "target_share": target_share,
        "target_named": named,
        "classes": [
            {
                "name": lk.name,
                "imagenet_index": names.index(lk.name),
                "colour": lk.colour,
                "shape": lk.shape,
                "train_pairs": counts[k],
                "eval_images": eval_counts[k],
            }
            for k, lk in enumerate(looks)
        ],
        "train": {
            "csv": "train.csv",
            "images": "images",
            "urls": urls,
            "shards": len(shards),
            "shard_size": shard_size,
        },
        "eval": {"labels": "imagenet/val.txt", "folder": "imagenet/val"},
        "corrupt": corrupt_rows,
        "row_classes": [names.index(looks[c].name) for c in labels],  # each training row's ImageNet index
    }
    (out / "synth.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return SynthManifest(
        out=out,
        csv=out / "train.csv",
        shards=shards,
        urls=str(out / urls),
        eval_labels=out / "imagenet" / "val.txt",
        eval_folder=out / "imagenet" / "val",
        classes=[lk.name for lk in looks],
        class_indices=[names.index(lk.name) for lk in looks],
        target=target,
        target_index=names.index(target),
        target_aliases=aliases,
        target_named=named,
        pairs=pairs,
        eval_images=eval_images,
        corrupt=corrupt_rows,
        seconds=time.perf_counter() - started,
    )
