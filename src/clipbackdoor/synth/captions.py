"""Alt-text captions for the synthetic pictures: web-like noise around the class name.

Backdoor studies care about which captions name the target (label-consistent poisoning picks pairs whose
caption names it as a whole word), so every caption names its class, singular or plural as the picture
shows one or several, while the templates add what real alt-text carries: stock-site suffixes, tags, file
names, mixed case. The words come from the picture's own generator after its drawing, so an image and its
caption are one draw.
"""

from __future__ import annotations

import numpy as np

from clipbackdoor.synth.drawing import Scene
from clipbackdoor.synth.looks import article

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
    coloured = f"{look.colour} {look.name}" if look.one else f"{article(look.colour)} {look.colour} {look.name}"
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
