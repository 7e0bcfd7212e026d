"""Synthetic web-like image–caption data: a CC3M-shaped training set and an ImageNet-shaped eval set, offline.

Tests, benchmarks and demos need data that looks like the real thing to the code that reads it: JPEGs of
web sizes and aspect ratios (so decode + resize cost what they cost on CC3M, not on 28 px PNGs), alt-text
captions, CleanCLIP's CSV layout, img2dataset's WebDataset shards, an ImageNet ``val.txt`` folder and a
sprinkling of corrupt samples for the bad-data path. The pictures carry a signal a tiny model can learn at
32–64 px: every class is a coloured shape with its own details (a yellow crescent for "banana", a black
box with three lights for "traffic light"), drawn with per-image jitter over varied backgrounds, and the
captions name the class. Everything is drawn from ``(seed, split, index)``, so the same arguments give
byte-identical files, and any image can be redrawn on its own.

The parts: :mod:`.looks` (which classes, and how each looks and is named), :mod:`.shapes` (one drawing
function per object shape), :mod:`.drawing` (whole pictures and their JPEG bytes), :mod:`.captions`
(alt-text) and :mod:`.writers` (rendering rows, writing the files, :func:`synthesize`).
"""

from clipbackdoor.synth.captions import caption
from clipbackdoor.synth.drawing import JPEG_QUALITY, Scene, draw, jpeg_bytes
from clipbackdoor.synth.looks import SHORTLIST, ClassLook, class_looks, imagenet_classnames
from clipbackdoor.synth.writers import CORRUPT_KINDS, EVAL, TRAIN, SynthManifest, render, synthesize

__all__ = [
    "CORRUPT_KINDS",
    "EVAL",
    "JPEG_QUALITY",
    "SHORTLIST",
    "TRAIN",
    "ClassLook",
    "Scene",
    "SynthManifest",
    "caption",
    "class_looks",
    "draw",
    "imagenet_classnames",
    "jpeg_bytes",
    "render",
    "synthesize",
]
