"""``data.decode: gpu``: decode, resize and augment the training images on the device, in batches.

For nodes whose CPUs cannot feed their GPUs (see ``clipbackdoor plan``): loader workers only read files,
tokenise captions and make the EDA views, and pass each whole JPEG on as its bytes. On the device, the batch
is decoded by torchvision (nvJPEG on CUDA, libjpeg-turbo on the CPU: the same code, so CI tests it), each
image is resized (bicubic, antialiased) to the resize-then-crop window of DESIGN §5 and cropped, and the
AutoAugment views are made for the whole batch at once (:class:`BatchedAutoAugment`). Images that are not
JPEGs (the poisoned PNGs) or are not whole JPEG streams arrive decoded by the worker, as on the CPU path.

A JPEG that passes the worker's check yet fails to decode on the device cannot be swapped for another
sample there (every rank's batch has its size fixed): it is decoded on the CPU instead, and if that fails
too it becomes a mid-grey image, counted as a bad row (``data.max_bad_rows`` stops a run that has many).
"""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from clipbackdoor.config import ConfigError
from clipbackdoor.data.bad_rows import BadRow
from clipbackdoor.data.transforms import ResizeCenterCrop, resize_center_crop


class DeviceDecode:
    """Turns a loader batch into one the step can use: ``image`` uint8 [B, 3, S, S] on ``device`` and, when the
    view maker asks for it, ``image_aug`` made there from the decoded images."""

    def __init__(self, size: int, device: torch.device, view_maker: Any = None):
        if (
            view_maker is not None
            and view_maker.image_views
            and (view_maker.policy != "autoaugment-imagenet" or view_maker.image_views != ("image_aug",))
        ):
            raise ConfigError(
                f"data.decode: gpu makes AutoAugment's image_aug on the device; augment.image={view_maker.policy} "
                f"with {list(view_maker.image_views)} has no device form: use data.decode: cpu"
            )
        self.size, self.device, self.view_maker = size, device, view_maker

    def __call__(self, batch: dict[str, Any], epoch: int) -> dict[str, Any]:
        images = batch["image"]
        if isinstance(images, list):
            images = self.decode(images, batch)
        images = images.to(self.device, non_blocking=True)
        batch["image"] = images
        if self.view_maker is not None and self.view_maker.image_views:
            batch["image_aug"] = self.view_maker.image_batch(images, epoch, batch["index"].tolist())
        return batch

    def decode(self, entries: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Stack decoded images and JPEG bytes (1-D) into uint8 [B, 3, S, S] on the device, in order."""
        jpegs = [i for i, x in enumerate(entries) if x.dim() == 1]
        out = torch.empty((len(entries), 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        for i, x in enumerate(entries):
            if x.dim() == 3:
                out[i] = x.to(self.device, non_blocking=True)
        try:
            decoded = decode_jpeg([entries[i] for i in jpegs], mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one bad stream fails the whole call: decode one by one to find it
            decoded = [self._decode_one(entries[i], batch, i) for i in jpegs]
        for i, image in zip(jpegs, decoded, strict=True):
            out[i] = resize_center_crop(image, self.size)
        return out

    def _decode_one(self, data: torch.Tensor, batch: dict[str, Any], position: int) -> torch.Tensor:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass
        try:
            with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
                return ResizeCenterCrop(self.size)(image).to(self.device)
        except (OSError, ValueError, SyntaxError) as err:
            index = int(batch["index"][position])
            reason = f"a JPEG that decodes on neither the device nor the CPU ({err}); trained on as grey"
            batch.setdefault("bad_rows", []).append(BadRow("device decode", index, reason))
            return torch.full((3, self.size, self.size), 128, dtype=torch.uint8, device=self.device)
