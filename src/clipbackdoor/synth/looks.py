"""The classes the synthetic set draws: which ImageNet classes, and how each one looks and is named.

This is the table the drawing and the captions both read, kept apart from either so that choosing classes
(and validating a target against open_clip's ImageNet names) costs no image code. The shortlist holds
visually simple classes whose colour + shape + details differ pairwise, so a tiny model can separate them
at 32 px; any other ImageNet class can still be the target through a look derived from its name.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from clipbackdoor.config import ConfigError

RGB = tuple[int, int, int]


def article(word: str) -> str:
    """The indefinite article for ``word``, by its first letter (all the names here need no more)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


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
        return self.one or f"{article(self.name)} {self.name}"

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
