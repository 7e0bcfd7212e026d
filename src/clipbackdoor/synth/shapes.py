"""The object shapes, one drawing function per look's ``shape``: what makes each class recognisable.

Each function draws the object's mask (``m``, white = object) and its details on the colour layer (``c``,
already filled with the class colour) inside an s×s box; details outside the mask are cut away when the
two are combined. They are plain ImageDraw calls at fractions of ``s``, so a shape looks the same at any
size, and their own randomness (spots, which light is lit) comes from the picture's generator, keeping
every image a function of its seed. They live apart from the scene code: a new kind of object is a
function here and a row in the shortlist, and nothing else changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import ImageDraw

from clipbackdoor.synth.looks import RGB

D = ImageDraw.ImageDraw
Rng = np.random.Generator
Draw = Callable[[D, D, int, Rng, RGB], None]


def _ell(d: D, s: int, x0: float, y0: float, x1: float, y1: float, fill: int | RGB) -> None:
    d.ellipse((x0 * s, y0 * s, x1 * s, y1 * s), fill=fill)


def _dots(c: D, s: int, rng: Rng, n: int, r: float, fill: RGB) -> None:
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
