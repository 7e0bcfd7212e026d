"""Image preprocessing split in two stages: geometry on the PIL image, normalisation on the device batch.

Loaders yield uint8 tensors after a bicubic resize + centre crop (a quarter of the bytes of float through
worker pipes and host-to-device copies); scaling to [0, 1] and mean/std normalisation happen on the batch,
on the device. That way a trigger can be applied to the same resized, cropped pixels as the clean image
(DESIGN §5), to a whole batch at once, before normalisation.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# PIL's own margin for reduced JPEG decoding (``Image.thumbnail``'s ``reducing_gap``): decode at 1/2, 1/4 or
# 1/8 scale only while the result stays at least twice the size the image is resized to. At 1x, on the
# generated web-like JPEGs, the mean difference from a full decode reaches 2.9/255; at 2x it stays under 0.9/255.
DRAFT_GAP = 2.0


class ResizeCenterCrop:
    """PIL image (any mode) -> uint8 tensor [3, size, size]: shorter side to ``size`` (bicubic), centre crop.

    The crop is resampled straight from its source box (one bicubic pass over the pixels kept, the same
    sample positions as resize-then-crop), and a JPEG that is still undecoded (``Image.open`` without
    ``load``, as the row sources hand it over) is decoded by libjpeg at a reduced scale when it is at least
    ``2 * draft_gap`` times the target (``draft_gap=None``: always in full). Both keep the pixels within
    0.9/255 of decode-in-full + resize + crop (tests/test_decode_fidelity.py) for 1.4-2.3x less CPU.
    PIL's bicubic resize antialiases when shrinking and works on uint8, so overshoot saturates in range.
    """

    def __init__(self, size: int, draft_gap: float | None = DRAFT_GAP):
        self.size = size
        self.draft_gap = draft_gap

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.resize(image))

    def resize(self, image: Image.Image) -> Image.Image:
        """The resized, centre-cropped RGB image (augmentations work on it before it becomes a tensor)."""
        box = self._decode(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # transparent pixels carry arbitrary colours: show them on white, as a browser would
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")  # palette, CMYK, 16-bit: one canonical colour mode
        w, h = box[2] - box[0], box[3] - box[1]  # the source's own size, in the decoded image's pixels
        s = self.size
        if (w, h) != (s, s):
            scale = s / min(w, h)
            # the resized image a resize-then-crop would make, and the window of it that is kept
            rw, rh = max(s, int(w * scale)), max(s, int(h * scale))
            left, top = (rw - s) // 2, (rh - s) // 2
            fx, fy = w / rw, h / rh
            crop = (left * fx, top * fy, (left + s) * fx, (top + s) * fy)
            image = image.resize((s, s), Image.Resampling.BICUBIC, box=crop)
        return image.convert("RGB") if image.mode == "L" else image  # grey is resized as one channel: cheaper

    def _decode(self, image: Image.Image) -> tuple[float, float, float, float]:
        """Decode ``image`` if it is not yet, at a reduced scale where allowed; the box, in its decoded pixels,
        that holds the whole source (libjpeg rounds a reduced size up, so the box can be fractional)."""
        box: tuple[float, float, float, float] = (0, 0, *image.size)
        source_min = min(image.size)
        if self.draft_gap is not None and image.format == "JPEG" and source_min >= 2 * self.draft_gap * self.size:
            scale = self.draft_gap * self.size / source_min
            drafted = image.draft(image.mode, (int(image.size[0] * scale), int(image.size[1] * scale)))
            if drafted is not None:
                box = drafted[1]
        image.load()
        return box

    @staticmethod
    def to_tensor(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def squash(image: Image.Image, size: int) -> torch.Tensor:
    """The whole image resized to ``size`` × ``size`` (bicubic, aspect ratio lost), uint8 [3, size, size]: the
    study's triggered evaluation copy, which attack-cleanclip's backdoor/utils.py ``apply_trigger`` makes with
    ``image.resize((224, 224))`` before the patch (the clean copy is resized and centre-cropped)."""
    return ResizeCenterCrop.to_tensor(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


def complete_jpeg(data: bytes) -> bool:
    """Whether ``data`` is a JPEG stream that ends (its end marker within the last bytes: some writers pad).

    libjpeg decodes a truncated stream with a grey bottom and only a warning; PIL refuses it. So a stream
    without its end marker goes to PIL, where it fails and the row is replaced."""
    return data[:2] == JPEG_START and JPEG_END in data[-32:]


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, h, w] (any device) -> [3, size, size]: :class:`ResizeCenterCrop`'s window (the same rounding of
    sizes and offsets), resized by torch's antialiased bicubic kernel (vectorised for uint8 on the CPU)."""
    h, w = image.shape[-2:]
    scale = size / min(w, h)
    rw, rh = max(size, int(w * scale)), max(size, int(h * scale))
    if (rw, rh) != (w, h):
        image = F.resize(image, [rh, rw], interpolation=InterpolationMode.BICUBIC, antialias=True)
    left, top = (rw - size) // 2, (rh - size) // 2
    return image[..., top : top + size, left : left + size]


def decode_jpeg_resized(data: bytes, size: int) -> torch.Tensor | None:
    """A whole JPEG stream decoded by torchvision (libjpeg-turbo) and resized by torch: uint8 [3, size, size],
    2-2.5x the samples/s per core of PIL's decode and resize (benchmarks/results/data.json) and within
    0.6/255 of them; None when it is not a whole JPEG or torchvision cannot read it (PIL then tries)."""
    if not complete_jpeg(data):
        return None
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    return resize_center_crop(image, size).contiguous()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input is taken to be in [0, 1] already."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class Normalize(torch.nn.Module):
    """Batch normalisation to the model's mean/std, on the device, right before the image encoder."""

    def __init__(self, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (to_unit(images) - self.mean) / self.std


def open_image(path: str) -> Image.Image:
    """Open an image without decoding it: :class:`ResizeCenterCrop` decodes it, at a reduced size if it may.

    Decoding errors (a truncated file) therefore surface at the resize, which every reader calls inside its
    guard against :data:`clipbackdoor.data.datasets.DECODE_ERRORS`. PIL closes the file once it is decoded."""
    return Image.open(path)
