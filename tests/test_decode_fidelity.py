"""The loader's decode shortcuts keep the pixels of the definition (DESIGN §5: bicubic resize of the shorter
side, centre crop) within the data-path tolerance: mean absolute difference ≤ 2/255 per image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipbackdoor.data.transforms import ResizeCenterCrop, complete_jpeg, decode_jpeg_resized
from clipbackdoor.synth import synthesize

TOLERANCE = 2.0  # mean |difference| per image, in 8-bit levels


def reference(data: bytes, size: int) -> np.ndarray:
    """The definition, step by step: decode in full, shorter side to ``size`` (bicubic), crop the centre."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
    w, h = image.size
    rw, rh = max(size, int(w * size / min(w, h))), max(size, int(h * size / min(w, h)))
    image = image.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = (rw - size) // 2, (rh - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float64)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Web-like JPEGs of 200-1200 px a side (every texture and shape the generator draws)."""
    out = tmp_path_factory.mktemp("web") / "set"
    m = synthesize(out, pairs=40, eval_images=0, corrupt=0, min_side=200, max_side=1200)
    return [p.read_bytes() for p in sorted((m.out / "images").glob("*.jpg"))]


@pytest.mark.parametrize("size", [64, 224])
def test_reduced_decode_and_box_resize_stay_within_tolerance(jpegs: list[bytes], size: int) -> None:
    fast, drafted = ResizeCenterCrop(size), 0
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as image:
            source = image.size
            got = np.asarray(fast.resize(image), dtype=np.float64)
            drafted += image.size != source  # libjpeg decoded it at 1/2, 1/4 or 1/8 scale
        assert got.shape == (size, size, 3)
        assert np.abs(got - reference(data, size)).mean() <= TOLERANCE
    assert drafted > (len(jpegs) // 2 if size == 64 else 0)  # the shortcut was taken, not skipped


@pytest.mark.parametrize("size", [64, 224])
def test_torchvision_decode_and_torch_resize_stay_within_tolerance(jpegs: list[bytes], size: int) -> None:
    """The loader's path for whole JPEGs: torchvision's libjpeg-turbo decode, torch's uint8 bicubic resize."""
    for data in jpegs:
        got = decode_jpeg_resized(data, size)
        assert got is not None and got.shape == (3, size, size) and got.dtype.is_floating_point is False
        assert np.abs(got.permute(1, 2, 0).numpy() - reference(data, size)).mean() <= TOLERANCE
    truncated = jpegs[0][: len(jpegs[0]) // 2]
    assert not complete_jpeg(truncated) and decode_jpeg_resized(truncated, size) is None  # PIL's to refuse


def test_without_the_draft_only_the_box_resize_differs(jpegs: list[bytes]) -> None:
    """``draft_gap=None`` decodes in full; resampling the crop's box alone is within 0.5/255 of resize + crop,
    and square sources (Fashion-MNIST) are resized exactly as before."""
    full = ResizeCenterCrop(224, draft_gap=None)
    for data in jpegs[:10]:
        with Image.open(io.BytesIO(data)) as image:
            got = np.asarray(full.resize(image), dtype=np.float64)
            assert image.size == Image.open(io.BytesIO(data)).size
        assert np.abs(got - reference(data, 224)).mean() <= 0.5
    square = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), mode="L")
    buffer = io.BytesIO()
    square.save(buffer, format="PNG")
    assert np.array_equal(np.asarray(full.resize(square), dtype=np.float64), reference(buffer.getvalue(), 32 * 7))


def test_a_truncated_jpeg_fails_at_the_resize(jpegs: list[bytes]) -> None:
    """Undecoded images are decoded inside the resize, so a truncated file raises there (readers guard it)."""
    with Image.open(io.BytesIO(jpegs[0][: len(jpegs[0]) // 2])) as image, pytest.raises(OSError):
        ResizeCenterCrop(64).resize(image)
