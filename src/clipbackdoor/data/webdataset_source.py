"""Image–caption pairs streamed from WebDataset shards (img2dataset's layout), for data that does not fit
a CSV of files: CC3M, CC12M.

Items are the same dicts as :class:`PairDataset` yields, so the loop, the objectives and the views do not
know where pairs come from. Shards are split over ranks and DataLoader workers (or resampled), samples go
through a shuffle buffer, and everything is seeded by (seed, epoch, rank, worker): the same config gives
the same stream. A sample's view seed is derived from its shard and key, so views are reproducible too.

A stream's order depends on the number of ranks and workers. Local ``.tar`` shards can instead be read with
``access: index`` (:class:`ShardRows` behind the map-style dataset): one global order over all samples, so
the same config on 1 or 8 processes trains on the same batches.
"""

from __future__ import annotations

import io
import random
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from clipbackdoor.config import ConfigError, WebDatasetPairs
from clipbackdoor.data.bad_rows import BadRow, DataError
from clipbackdoor.data.batching import BatchLayout
from clipbackdoor.data.datasets import DECODE_ERRORS, image_entries
from clipbackdoor.data.sampling import FALLBACKS
from clipbackdoor.data.transforms import ResizeCenterCrop


def shard_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns expanded (``a-{000..009}.tar``), in order."""
    patterns = [urls] if isinstance(urls, str) else urls
    return [u for pattern in patterns for u in wds.SimpleShardList(pattern).urls]


class ShardPairs(IterableDataset):
    def __init__(
        self,
        cfg: WebDatasetPairs,
        transform: ResizeCenterCrop,
        tokenizer: Callable[[list[str]], torch.Tensor],
        view_maker: Any,
        seed: int,
        rank: int,
        layout: BatchLayout,
        num_workers: int,
        device_decode: bool = False,
    ):
        self.cfg, self.transform, self.tokenizer, self.view_maker = cfg, transform, tokenizer, view_maker
        self.device_decode = device_decode
        self.seed, self.rank, self.world_size = seed, rank, layout.world_size
        self.urls = shard_urls(cfg.urls)
        self.workers = max(1, num_workers)
        if not self.urls:
            raise ConfigError(f"data.train.urls: {cfg.urls!r} names no shards")
        if not cfg.resampled and len(self.urls) < self.world_size * self.workers:
            raise ConfigError(
                f"{len(self.urls)} shards cannot be split over {self.world_size} rank(s) × {self.workers} "
                "worker(s); use data.train.resampled=true or more shards"
            )
        assert cfg.epoch_samples is not None  # the config requires it when streaming
        # Every rank yields the same number of full micro-batches (the DataLoader batches each worker's items
        # on its own, so each worker yields whole micro-batches): ranks cannot fall out of step under DDP.
        self.micro_batches = layout.steps_per_epoch(cfg.epoch_samples) * layout.accum_steps
        self.micro_batch = layout.micro_batch
        self.epoch = 0
        self.bad: list[BadRow] = []  # load-time bad rows: none, shards are only read while streaming

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, worker: int, purpose: int) -> random.Random:
        """Seeded by integers only: their hash is the same in every process (str hashes are salted)."""
        return random.Random(hash((self.seed, self.epoch, self.rank, worker, purpose)))

    def __len__(self) -> int:
        return self.micro_batches * self.micro_batch

    def _quota(self, worker: int) -> int:
        """Samples this worker yields per epoch: its share of the rank's micro-batches, whole batches only."""
        share, rest = divmod(self.micro_batches, self.workers)
        return (share + (worker < rest)) * self.micro_batch

    def _shards(self, worker: int) -> Iterator[str]:
        rng = self._rng(worker, 0)
        if self.cfg.resampled:
            while True:
                yield rng.choice(self.urls)
        mine = self.urls[self.rank :: self.world_size][worker :: self.workers]
        while True:  # cycle through this worker's share, reshuffled each pass
            rng.shuffle(mine)
            yield from mine

    def __iter__(self) -> Iterator[dict[str, Any] | BadRow]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        samples = wds.tarfile_to_samples()({"url": url} for url in self._shards(worker))
        buffer = self.cfg.shuffle_buffer
        stream = wds.filters._shuffle(samples, bufsize=buffer, initial=buffer, rng=self._rng(worker, 1))
        quota, replaced = self._quota(worker), []
        for sample in stream:
            if quota == 0:
                return
            item = self._item(sample)
            if isinstance(item, BadRow):  # the next good sample of this stream stands in; counted in the loop
                replaced.append(item)
                if len(replaced) > FALLBACKS:
                    raise DataError(
                        f"{len(replaced)} consecutive unreadable samples; first ones:\n  "
                        + "\n  ".join(str(r) for r in replaced[:5])
                    )
                continue
            if replaced:
                item["replaced"], replaced = replaced, []
            quota -= 1
            yield item

    def _item(self, sample: dict[str, Any]) -> dict[str, Any] | BadRow:
        url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
        index = zlib.crc32(f"{url}/{key}".encode()) & 0x7FFFFFFF
        image_key = next((k for k in self.cfg.image_keys if k in sample), None)
        if image_key is None or self.cfg.caption_key not in sample:
            return BadRow(url, index, f"sample {key!r} lacks an image ({self.cfg.image_keys}) or a caption")
        try:
            caption = sample[self.cfg.caption_key].decode("utf-8").strip()
        except UnicodeDecodeError:
            return BadRow(url, index, f"sample {key!r}: caption is not valid UTF-8")
        if not caption:
            return BadRow(url, index, f"sample {key!r}: empty caption")
        data = sample[image_key]
        try:
            item = image_entries(
                lambda: Image.open(io.BytesIO(data)), self.transform, self.view_maker, self.epoch, index,
                self.device_decode, data,
            )  # fmt: skip
        except DECODE_ERRORS as err:
            return BadRow(url, index, f"sample {key!r}: unreadable image ({err})")
        item.update(text=self.tokenizer([caption])[0], index=index)
        for view in self.view_maker.text_views if self.view_maker is not None else ():
            item[view] = self.tokenizer([self.view_maker.text(caption, self.epoch, index, view)])[0]
        return item


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(samples: Iterator[tuple[str, bytes, str, str]], pattern: str, per_shard: int = 1000) -> list[str]:
    """Write (key, encoded image, its extension, caption) samples as img2dataset-style shards
    (``<key>.<ext>`` + ``<key>.txt``); the image bytes go in as they are. Returns the files."""
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for key, data, ext, caption in samples:
            sink.write({"__key__": key, ext: data, "txt": caption.encode("utf-8")})
        count = sink.shard
    return [pattern % i for i in range(count)]


class ShardRows:
    """Random access to the pairs of local shards, for steps that read row by row (``poison``).

    One pass indexes every sample (its image member's offset and size, its caption); ``pil(i)`` then seeks
    straight to the image. Samples without an image, or with an empty or non-UTF-8 caption, are ``bad``.
    """

    def __init__(self, cfg: WebDatasetPairs):
        self.source = str(cfg.urls)
        self.bad: list[BadRow] = []
        self.entries: list[tuple[str, int, int, str, str]] = []  # (shard, image offset, size, extension, caption)
        self.keys: list[str] = []  # each entry's sample key (a poisoned set's keys are its train.csv row numbers)
        for url in shard_urls(cfg.urls):
            try:
                self._index(url, cfg)
            except (OSError, tarfile.TarError) as err:
                raise DataError(f"{url}: not a readable local shard ({err})") from None
        if not self.entries:
            raise DataError(f"{cfg.urls}: no usable samples ({len(self.bad)} bad)")

    def _index(self, url: str, cfg: WebDatasetPairs) -> None:
        if not url.endswith(".tar"):
            raise DataError(f"{url}: only plain local .tar shards can be read row by row (images are seeked to)")
        with tarfile.open(url) as tar:
            samples: dict[str, dict[str, tarfile.TarInfo]] = {}
            for member in tar:
                if member.isfile():
                    key, _, ext = member.name.partition(".")
                    samples.setdefault(key, {})[ext] = member
            for key, members in samples.items():
                position = len(self.entries) + len(self.bad)
                image = next((members[k] for k in cfg.image_keys if k in members), None)
                text = members.get(cfg.caption_key)
                try:
                    caption = tar.extractfile(text).read().decode("utf-8").strip() if text else ""
                except UnicodeDecodeError:
                    caption = None
                if image is None or not caption:
                    reason = "no image" if image is None else "empty caption" if caption == "" else "not UTF-8"
                    self.bad.append(BadRow(url, position, f"sample {key!r}: {reason}"))
                    continue
                ext = image.name.partition(".")[2]
                self.entries.append((url, image.offset_data, image.size, ext, caption))
                self.keys.append(key)

    def __len__(self) -> int:
        return len(self.entries)

    def row_id(self, index: int) -> int:
        return index

    @property
    def ordinals(self) -> list[int] | None:
        """The rows of train.csv the samples are, when their keys are row numbers (shards ``poison`` wrote)."""
        return [int(k) for k in self.keys] if all(k.isdigit() for k in self.keys) else None

    def caption(self, index: int) -> str:
        return self.entries[index][4]

    def encoded(self, index: int) -> bytes:
        """The image's bytes as stored (for decoding on the device)."""
        return self.raw(index)[0]

    def raw(self, index: int) -> tuple[bytes, str]:
        """The image's bytes as stored, and its extension (``jpg``): copied on without decoding."""
        url, offset, size, ext, _ = self.entries[index]
        with open(url, "rb") as f:
            f.seek(offset)
            return f.read(size), ext

    def pil(self, index: int) -> Image.Image:
        """The image, opened but not decoded (see :func:`clipbackdoor.data.transforms.open_image`)."""
        return Image.open(io.BytesIO(self.raw(index)[0]))
