"""The two dataset kinds every source is read through: image–caption pairs and labelled images.

A source only needs to provide rows (``pil``, ``caption`` or ``label``, ``row_id``, ``source``, ``bad``);
decoding errors, tokenisation and skip-and-count are handled here once for all sources.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from clipbackdoor.data.bad_rows import BadRow, DataError
from clipbackdoor.data.sampling import SampleKey
from clipbackdoor.data.transforms import ResizeCenterCrop, complete_jpeg, decode_jpeg_resized, squash

# Decoding failures that mean "this row is bad"; anything else is a bug and must surface.
DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)


class PairDataset(Dataset):
    """Items are ``{"image": uint8 [3,H,W], "text": token ids, "index": int}`` or a :class:`BadRow`.

    With a ``view_maker`` the items also carry ``image_aug`` and/or ``text_aug``. With ``device_decode``, a
    complete JPEG is passed on undecoded (see :func:`image_entries`). With ``squash_triggered`` (retrieval under
    ``eval.triggered_copy: squash``) they carry ``image_squashed`` as :class:`LabelledDataset`'s do. Keys may be
    plain indices, ``(epoch, index)`` pairs or the training sampler's ``(epoch, index, successors)``: the epoch
    travels with the key, so views are seeded per epoch even inside persistent DataLoader workers.
    """

    def __init__(
        self,
        rows: Any,
        transform: ResizeCenterCrop,
        tokenizer: Callable[[list[str]], torch.Tensor],
        view_maker: Any = None,
        device_decode: bool = False,
        squash_triggered: bool = False,
    ):
        self.rows = rows
        self.transform = transform
        self.tokenizer = tokenizer
        self.view_maker = view_maker
        self.device_decode = device_decode
        self.squash_triggered = squash_triggered
        # Many captions repeat (templates); tokenising each distinct caption once is free speed.
        self._tokens = lru_cache(maxsize=1 << 16)(self._tokenize)

    def _tokenize(self, caption: str) -> torch.Tensor:
        return self.tokenizer([caption])[0]

    @property
    def bad(self) -> list[BadRow]:
        """Rows its source dropped at load time (empty captions, bad paths, duplicates)."""
        return self.rows.bad

    def without_views(self) -> PairDataset:
        """The same pairs without augmented views (for passes that only need the originals)."""
        return PairDataset(self.rows, self.transform, self.tokenizer)

    def with_views(self, views: frozenset[str]) -> PairDataset:
        """The same pairs with only ``views`` of those this dataset makes (SafeCLIP scores view 1)."""
        assert self.view_maker is not None and views <= self.view_maker.views, "views this dataset does not make"
        return PairDataset(self.rows, self.transform, self.tokenizer, replace(self.view_maker, views=views))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int] | SampleKey) -> dict[str, Any] | BadRow:
        """An item, or a :class:`BadRow` for an unreadable image. A training key ``(epoch, index, successors)``
        never gives a BadRow: the first readable successor stands in, and the bad ones ride along under
        ``"replaced"`` to be counted (see :mod:`clipbackdoor.data.sampling`)."""
        if isinstance(key, tuple) and len(key) == 3:
            epoch, index, successors = key
            replaced: list[BadRow] = []
            for candidate in (index, *successors):
                item = self._item(epoch, candidate)
                if not isinstance(item, BadRow):
                    return {**item, "replaced": replaced} if replaced else item
                replaced.append(item)
            raise DataError(
                f"{len(replaced)} consecutive samples of the epoch's order are unreadable; first ones:\n  "
                + "\n  ".join(str(r) for r in replaced[:5])
            )
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self._item(epoch, index)

    def _item(self, epoch: int, index: int) -> dict[str, Any] | BadRow:
        try:
            data = self.rows.encoded(index) if hasattr(self.rows, "encoded") else None
            opener = (lambda: Image.open(io.BytesIO(data))) if data is not None else (lambda: self.rows.pil(index))
            if self.squash_triggered:
                item = both_copies(opener, self.transform)
            else:
                item = image_entries(opener, self.transform, self.view_maker, epoch, index, self.device_decode, data)
        except DECODE_ERRORS as err:
            return BadRow(self.rows.source, self.rows.row_id(index), f"unreadable image ({err})")
        caption = self.rows.caption(index)
        item.update(text=self._tokens(caption), index=index)
        for view in self.view_maker.text_views if self.view_maker is not None else ():
            item[view] = self._tokens(self.view_maker.text(caption, epoch, index, view))
        return item

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_tokens"]  # lru_cache wrappers do not pickle; workers rebuild their own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tokens = lru_cache(maxsize=1 << 16)(self._tokenize)


class LabelledDataset(Dataset):
    """Items are ``{"image": uint8 [3,H,W], "label": int, "index": int}`` or a :class:`BadRow`.

    With ``squash_triggered`` they also carry ``image_squashed``, the whole image resized to H×W (aspect ratio
    lost, :func:`~clipbackdoor.data.transforms.squash`) for the evaluator to trigger instead of ``image``, as the
    study evaluated (``eval.triggered_copy: squash``). Both come from one decode, in full (no reduced JPEG
    decoding), on the loader's CPU workers: evaluation never decodes on the device.
    """

    def __init__(
        self,
        rows: Any,
        transform: ResizeCenterCrop,
        classnames: Sequence[str],
        templates: Sequence[str],
        squash_triggered: bool = False,
    ):
        self.rows = rows
        self.transform = transform
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.squash_triggered = squash_triggered

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | BadRow:
        item: dict[str, Any] = {"label": self.rows.label(index), "index": index}
        try:
            data = self.rows.encoded(index) if hasattr(self.rows, "encoded") else None
            opener = (lambda: Image.open(io.BytesIO(data))) if data is not None else (lambda: self.rows.pil(index))
            if self.squash_triggered:
                item.update(both_copies(opener, self.transform))
            else:
                image = decode_jpeg_resized(data, self.transform.size) if data is not None else None
                if image is None:  # not a whole JPEG: PIL decodes (or refuses) it
                    with opener() as source:
                        image = self.transform(source)
                item["image"] = image
        except DECODE_ERRORS as err:
            return BadRow(self.rows.source, self.rows.row_id(index), f"unreadable image ({err})")
        return item


def image_entries(
    open_image: Callable[[], Image.Image],
    transform: ResizeCenterCrop,
    view_maker: Any,
    epoch: int,
    index: int,
    device_decode: bool = False,
    encoded: bytes | None = None,
) -> dict[str, torch.Tensor]:
    """An item's image entries; raises one of :data:`DECODE_ERRORS` for an unreadable image.

    ``image`` is uint8 [3, S, S]: a whole JPEG (``encoded``, the file's bytes) is decoded by torchvision and
    resized by torch, anything else opened by ``open_image`` and resized by PIL (:class:`ResizeCenterCrop`).
    Each image view the view maker asks for (``image_aug``, ``image_aug2``) is made on the PIL image (~3x cheaper
    than torchvision's tensor kernels per image on the CPU). With ``device_decode`` (``data.decode: gpu``) the
    view is left to the device, and a whole JPEG is passed on as its bytes (uint8 [n]) for the device to
    decode (:mod:`clipbackdoor.data.device_decode`). A truncated JPEG goes to PIL, which refuses it.
    """
    whole_jpeg = encoded is not None and complete_jpeg(encoded)
    if device_decode and whole_jpeg:
        return {"image": torch.frombuffer(bytearray(encoded), dtype=torch.uint8)}
    image = decode_jpeg_resized(encoded, transform.size) if whole_jpeg else None
    resized = None
    if image is None:
        with open_image() as source:  # decoded inside the resize; closed on a decoding error too
            resized = transform.resize(source)
        image = transform.to_tensor(resized)
    entries = {"image": image}
    if not device_decode and view_maker is not None and view_maker.image_views:
        if resized is None:
            resized = Image.fromarray(image.permute(1, 2, 0).numpy())
        for view in view_maker.image_views:
            entries[view] = transform.to_tensor(view_maker.image(resized, epoch, index, view))
    return entries


def both_copies(open_image: Callable[[], Image.Image], transform: ResizeCenterCrop) -> dict[str, torch.Tensor]:
    """``image`` (resized, centre-cropped) and ``image_squashed`` (the whole image at size × size) from one
    decode in full: the clean and the triggered copy of ``eval.triggered_copy: squash``."""
    with open_image() as source:
        source.load()
        return {"image": transform(source), "image_squashed": squash(source, transform.size)}


def collate_skipping_bad(items: list[dict[str, Any] | BadRow]) -> dict[str, Any]:
    """Stack the good items; pass the bad ones (skipped, or replaced by a successor) on under ``"bad_rows"``
    for the main process to count."""
    good = [x for x in items if not isinstance(x, BadRow)]
    bad = [x for x in items if isinstance(x, BadRow)]
    for item in good:
        bad.extend(item.pop("replaced", ()))
    encoded = [x.pop("image") for x in good] if any(x["image"].dim() == 1 for x in good) else None
    batch: dict[str, Any] = default_collate(good) if good else {}
    if encoded is not None:  # JPEG bytes and decoded images, in order: the device decodes the batch
        batch["image"] = encoded
    batch["bad_rows"] = bad
    return batch
