"""One picture of a class: a web-like frame size, a backdrop, clutter, the objects, sensor grain, a JPEG.

The pictures must cost what real photos cost to decode and resize (hence web sizes and aspect ratios and
enough fine detail for the JPEG codec), yet carry a signal a tiny model learns at 32–64 px (hence a
coloured object near the centre, where the loaders' centre crop keeps it). Drawing is cheap by design:
backdrops are computed at a quarter of the resolution, rotations are nearest-neighbour, the grain is one
cached tile. Everything random comes from the generator passed in, in a fixed order, so a picture is a
function of its seed and the caption code can continue with the same generator.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from clipbackdoor.synth.looks import RGB, ClassLook
from clipbackdoor.synth.shapes import SHAPES

JPEG_QUALITY = 90

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
    """The picture as the JPEG file the data set stores (fixed quality, so the bytes depend on the picture only)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
