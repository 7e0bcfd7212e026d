"""Writing the synthetic set: rows rendered in any process, files written in one, in row order.

The readers under test expect the real layouts, so this writes CleanCLIP's CSV + JPEG folder,
img2dataset's WebDataset shards (the same JPEG bytes), an ImageNet ``val.txt`` folder, and a
``synth.json`` that says what is where and which rows are corrupt and how. Each row is drawn from its own
seed ``(seed, split, row)``, so rendering spreads over worker processes while the same arguments still
write byte-identical files; tar members carry fixed metadata for the same reason.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from clipbackdoor.config import ConfigError
from clipbackdoor.synth.captions import caption
from clipbackdoor.synth.drawing import JPEG_QUALITY, draw, jpeg_bytes
from clipbackdoor.synth.looks import ClassLook, class_looks, imagenet_classnames

CORRUPT_KINDS = ("truncated-jpeg", "zero-bytes", "not-an-image", "empty-caption")
TRAIN, EVAL = 0, 1  # the split number in every image's seed: eval images are other draws of the same process


@dataclass
class SynthManifest:
    """What :func:`synthesize` wrote (absolute paths) and the config entries that read it."""

    out: Path
    csv: Path
    shards: list[Path]
    urls: str  # brace pattern of the shards, for data.train.urls
    eval_labels: Path
    eval_folder: Path
    classes: list[str]
    class_indices: list[int]  # into open_clip's IMAGENET_CLASSNAMES
    target: str
    target_index: int
    target_aliases: list[str]
    target_named: int  # good pairs whose caption names the target (singular, whole word): label-consistent candidates
    pairs: int
    eval_images: int
    corrupt: list[dict[str, object]] = field(default_factory=list)  # {"row", "key", "csv_line", "kind"}
    seconds: float = 0.0

    def config(self) -> dict[str, str]:
        """``data.train`` / ``data.eval`` override values for this set, keyed by what they select."""
        return {
            "csv": f"{{source: csv, path: {self.csv}}}",
            "webdataset": f"{{source: webdataset, access: index, urls: '{self.urls}'}}",
            "eval": f"{{source: imagenet, labels: {self.eval_labels}, folder: {self.eval_folder}}}",
        }


def _corrupt_rows(pairs: int, corrupt: int) -> dict[int, str]:
    """Rows spread evenly over the set, their kinds cycling so that every kind occurs once ``corrupt`` >= 4."""
    return {int((k + 0.5) * pairs / corrupt): CORRUPT_KINDS[k % len(CORRUPT_KINDS)] for k in range(corrupt)}


def _spoil(data: bytes, kind: str) -> bytes:
    if kind == "truncated-jpeg":
        return data[: len(data) // 2]
    if kind == "zero-bytes":
        return b""
    if kind == "not-an-image":
        return b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
    return data


Job = tuple[int, int, ClassLook, str | None]  # (split, row, class, corrupt kind)
Rendered = tuple[bytes, str, tuple[int, int]]  # (file bytes, caption, (width, height))


def render(jobs: list[Job], seed: int, min_side: int, max_side: int) -> list[Rendered]:
    """The file bytes (spoiled as the kind says), caption and size of each row; each row has its own seed
    ``(seed, split, row)``, so any process can draw any row and the set is the same however it is split."""
    rendered = []
    for split, i, look, kind in jobs:
        rng = np.random.default_rng([seed, split, i])
        scene, image = draw(look, rng, min_side, max_side)
        text = "" if split == EVAL or kind == "empty-caption" else caption(scene, rng)
        rendered.append((_spoil(jpeg_bytes(image), kind or ""), text, scene.size))
    return rendered


def _rendered(jobs: list[Job], pool: Executor | None, **kwargs: int) -> Iterator[Rendered]:
    """``render`` over all jobs, in order; in chunks over worker processes when there is a pool."""
    chunk = 64
    parts = [jobs[k : k + chunk] for k in range(0, len(jobs), chunk)]
    results = pool.map(partial(render, **kwargs), parts) if pool is not None else map(partial(render, **kwargs), parts)
    for part in results:
        yield from part


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed metadata, so the same samples give byte-identical shards."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


def _clear(out: Path, overwrite: bool) -> None:
    mine = [out / "train.csv", out / "synth.json", out / "images", out / "shards", out / "imagenet"]
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} is not empty; choose an empty folder or overwrite (--force)")
        for path in mine:  # only what this module writes: a mistyped folder loses nothing else
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def synthesize(
    out: str | Path,
    *,
    pairs: int = 2000,
    eval_images: int = 200,
    classes: int = 10,
    target: str = "banana",
    target_share: float = 0.05,
    corrupt: int = 8,
    shard_size: int = 500,
    seed: int = 0,
    min_side: int = 120,
    max_side: int = 640,
    overwrite: bool = False,
    workers: int = 1,
) -> SynthManifest:
    """Write a CC3M-like training set and an ImageNet-like eval set under ``out``:

    ``train.csv`` + ``images/<key>.jpg`` (CleanCLIP's layout), ``shards/{00000..}.tar`` (img2dataset's:
    ``<key>.jpg``, ``<key>.txt``, ``<key>.json``; the same JPEG bytes as ``images/``), ``imagenet/val.txt`` +
    ``imagenet/val/*.JPEG`` (labels index open_clip's 1000 class names) and ``synth.json``, which says what
    is where, which rows are corrupt and how. ``target_share`` of the pairs show (and name) the target;
    ``corrupt`` rows, the same in the CSV and the shards, are a truncated JPEG, zero bytes, an HTML page or
    an empty caption, in turn. The same arguments write the same bytes, whatever the number of ``workers``
    (processes that draw and encode; the writing stays in this one, in row order).
    """
    started = time.perf_counter()
    out = Path(out)
    if pairs < 1 or eval_images < 0 or not 0 <= corrupt < pairs:
        raise ConfigError(f"pairs={pairs}, corrupt={corrupt}: need pairs >= 1 and 0 <= corrupt < pairs")
    if not 0.0 <= target_share <= 1.0:
        raise ConfigError(f"target_share={target_share}: choose a fraction in [0, 1]")
    if not 16 <= min_side <= max_side:
        raise ConfigError(f"min_side={min_side}, max_side={max_side}: need 16 <= min_side <= max_side")
    if shard_size < 1:
        raise ConfigError(f"shard_size={shard_size}: need at least 1")
    looks = class_looks(target, classes)
    if 0 < eval_images < len(looks):
        raise ConfigError(f"eval_images={eval_images}: need at least one per class ({len(looks)})")
    _clear(out, overwrite)
    names = imagenet_classnames()

    # Which class each row shows: the target's share exactly, the rest spread evenly, in a seeded order.
    order_rng = np.random.default_rng([seed, 0x5EED])
    n_target = round(target_share * pairs)
    labels = [0] * n_target + [1 + i % (len(looks) - 1) for i in range(pairs - n_target)]
    labels = order_rng.permutation(labels).tolist()
    eval_labels = order_rng.permutation([i % len(looks) for i in range(eval_images)]).tolist()
    spoiled = _corrupt_rows(pairs, corrupt)

    (out / "images").mkdir(parents=True)
    (out / "shards").mkdir()
    (out / "imagenet" / "val").mkdir(parents=True)
    size = {"seed": seed, "min_side": min_side, "max_side": max_side}
    if workers > 1 and pairs + eval_images >= 256:  # spawning costs ~0.5 s a process: not for small sets
        pool: Executor | None = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = None
    try:
        train = _rendered([(TRAIN, i, looks[c], spoiled.get(i)) for i, c in enumerate(labels)], pool, **size)
        rows: list[tuple[str, str]] = []
        shards: list[Path] = []
        names_it = re.compile(rf"(?<!\w){re.escape(target)}(?!\w)", re.IGNORECASE)  # as poisoning matches
        named = 0
        for start in range(0, pairs, shard_size):
            shards.append(out / "shards" / f"{len(shards):05d}.tar")
            with tarfile.open(shards[-1], "w", format=tarfile.USTAR_FORMAT) as tar:
                for i, (data, text, (width, height)) in zip(
                    range(start, min(pairs, start + shard_size)), train, strict=False
                ):
                    key = f"{i:09d}"
                    (out / "images" / f"{key}.jpg").write_bytes(data)
                    rows.append((f"images/{key}.jpg", text))
                    named += int(i not in spoiled and names_it.search(text) is not None)
                    meta = {
                        "url": f"https://synth.invalid/{key}.jpg", "key": key, "caption": text,
                        "status": "success", "width": width, "height": height,
                    }  # fmt: skip
                    _add(tar, f"{key}.jpg", data)
                    _add(tar, f"{key}.txt", text.encode("utf-8"))
                    _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
        with (out / "train.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "caption"])
            writer.writerows(rows)

        val_lines = []
        evaluation = _rendered([(EVAL, i, looks[c], None) for i, c in enumerate(eval_labels)], pool, **size)
        for i, (label, (data, _, _)) in enumerate(zip(eval_labels, evaluation, strict=True)):
            name = f"synth_val_{i + 1:08d}.JPEG"
            (out / "imagenet" / "val" / name).write_bytes(data)
            val_lines.append(f"{name} {names.index(looks[label].name)}\n")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    (out / "imagenet" / "val.txt").write_text("".join(val_lines), encoding="utf-8")

    urls = f"shards/{{00000..{len(shards) - 1:05d}}}.tar"
    corrupt_rows = [
        {"row": i, "key": f"{i:09d}", "csv_line": i + 2, "kind": kind} for i, kind in sorted(spoiled.items())
    ]
    look = looks[0]
    aliases = [look.plural] if look.plural != look.name else []
    counts = np.bincount(labels, minlength=len(looks)).tolist()
    eval_counts = np.bincount(eval_labels, minlength=len(looks)).tolist() if eval_labels else [0] * len(looks)
    record = {
        "seed": seed,
        "pairs": pairs,
        "eval_images": eval_images,
        "min_side": min_side,
        "max_side": max_side,
        "jpeg_quality": JPEG_QUALITY,
        "target": target,
        "target_index": names.index(target),
        "target_aliases": aliases,
        "target_share": target_share,
        "target_named": named,
        "classes": [
            {
                "name": lk.name,
                "imagenet_index": names.index(lk.name),
                "colour": lk.colour,
                "shape": lk.shape,
                "train_pairs": counts[k],
                "eval_images": eval_counts[k],
            }
            for k, lk in enumerate(looks)
        ],
        "train": {
            "csv": "train.csv",
            "images": "images",
            "urls": urls,
            "shards": len(shards),
            "shard_size": shard_size,
        },
        "eval": {"labels": "imagenet/val.txt", "folder": "imagenet/val"},
        "corrupt": corrupt_rows,
        "row_classes": [names.index(looks[c].name) for c in labels],  # each training row's ImageNet index
    }
    (out / "synth.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return SynthManifest(
        out=out,
        csv=out / "train.csv",
        shards=shards,
        urls=str(out / urls),
        eval_labels=out / "imagenet" / "val.txt",
        eval_folder=out / "imagenet" / "val",
        classes=[lk.name for lk in looks],
        class_indices=[names.index(lk.name) for lk in looks],
        target=target,
        target_index=names.index(target),
        target_aliases=aliases,
        target_named=named,
        pairs=pairs,
        eval_images=eval_images,
        corrupt=corrupt_rows,
        seconds=time.perf_counter() - started,
    )
