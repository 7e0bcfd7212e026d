"""Data sources, read through two dataset kinds: image–caption pairs (training) and labelled images (eval)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from clipbackdoor.config import (
    CsvLabelled,
    CsvPairs,
    FashionMNISTLabelled,
    FashionMNISTPairs,
    ImageNetLabelled,
    TorchvisionLabelled,
    WebDatasetPairs,
    class_index,
)
from clipbackdoor.data import fashion_mnist
from clipbackdoor.data.bad_rows import BadRow, BadRowLog, DataError
from clipbackdoor.data.batching import BatchLayout
from clipbackdoor.data.csv_source import CsvCaptionRows, CsvLabelRows
from clipbackdoor.data.datasets import LabelledDataset, PairDataset, collate_skipping_bad
from clipbackdoor.data.labelled_sources import ClassSubset, TorchvisionRows, imagenet_rows
from clipbackdoor.data.sampling import GlobalBatchSampler
from clipbackdoor.data.transforms import ResizeCenterCrop
from clipbackdoor.data.webdataset_source import ShardPairs, ShardRows

LabelledSourceConfig = FashionMNISTLabelled | CsvLabelled | ImageNetLabelled | TorchvisionLabelled
PairSourceConfig = FashionMNISTPairs | CsvPairs | WebDatasetPairs

__all__ = [
    "OPENAI_IMAGENET_PROMPTS",
    "BadRow",
    "BadRowLog",
    "DataError",
    "GlobalBatchSampler",
    "LabelledDataset",
    "PairDataset",
    "build_labelled_dataset",
    "build_pair_dataset",
    "build_pair_rows",
    "collate_skipping_bad",
]


# open_clip's 80 ImageNet prompts as "{}" templates: the zero-shot classifier's, and the study's poison captions
OPENAI_IMAGENET_PROMPTS: tuple[str, ...] = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


def build_pair_dataset(
    cfg: PairSourceConfig,
    image_size: int,
    seed: int,
    tokenizer: Callable[[list[str]], torch.Tensor],
    view_maker: Any = None,
    *,
    rank: int = 0,
    layout: BatchLayout | None = None,
    num_workers: int = 0,
    device_decode: bool = False,
) -> PairDataset | ShardPairs:
    """The training pairs a config names (load-time bad rows on ``dataset.bad``). Streamed shards are an
    iterable dataset that splits itself over the layout's ranks and ``num_workers`` loader workers. With
    ``device_decode`` JPEGs and AutoAugment views are left to :class:`~clipbackdoor.data.device_decode.DeviceDecode`."""
    transform = ResizeCenterCrop(image_size)
    if isinstance(cfg, WebDatasetPairs) and cfg.access == "stream":
        if layout is None:
            raise ValueError("streaming shards needs the batch layout (ranks and micro-batches)")
        return ShardPairs(cfg, transform, tokenizer, view_maker, seed, rank, layout, num_workers, device_decode)
    return PairDataset(build_pair_rows(cfg, seed), transform, tokenizer, view_maker, device_decode)


def build_pair_rows(cfg: PairSourceConfig, seed: int) -> fashion_mnist.FashionMNISTRows | CsvCaptionRows | ShardRows:
    """The rows (images + captions) of a pair source, random access; Fashion-MNIST captions are drawn with
    ``seed``; local WebDataset shards are indexed once."""
    if isinstance(cfg, WebDatasetPairs):
        return ShardRows(cfg)
    if isinstance(cfg, FashionMNISTPairs):
        rows = fashion_mnist.FashionMNISTRows(cfg.root, cfg.split, cfg.max_samples)
        templates = tuple(cfg.templates or fashion_mnist.CAPTION_TEMPLATES)
        rows.captions = fashion_mnist.draw_captions(rows.labels, templates, cfg.use_synonyms, seed)
        return rows
    return CsvCaptionRows(cfg.path, cfg.image_column, cfg.caption_column, cfg.delimiter, cfg.max_samples, cfg.root)


def build_labelled_dataset(
    cfg: LabelledSourceConfig, image_size: int, squash_triggered: bool = False
) -> LabelledDataset:
    """The labelled evaluation set a config names, with its class names and prompt templates (and, with
    ``squash_triggered``, each image's squashed copy for the trigger: ``eval.triggered_copy: squash``)."""
    if isinstance(cfg, FashionMNISTLabelled):
        rows = fashion_mnist.FashionMNISTRows(cfg.root, cfg.split, cfg.max_samples)
        classnames, templates = fashion_mnist.CLASSNAMES, cfg.templates or fashion_mnist.PROMPT_TEMPLATES
    elif isinstance(cfg, ImageNetLabelled):
        classnames = list(IMAGENET_CLASSNAMES)
        templates = cfg.templates or list(OPENAI_IMAGENET_PROMPTS)
        rows = imagenet_rows(cfg.labels, cfg.folder, len(classnames), cfg.max_samples)
        if cfg.classes:
            keep = [class_index(classnames, c, f"data.eval.classes[{j}]") for j, c in enumerate(cfg.classes)]
            rows = ClassSubset(rows, keep)
            classnames = [classnames[i] for i in keep]
    elif isinstance(cfg, TorchvisionLabelled):
        rows = TorchvisionRows(cfg.name, cfg.root, cfg.split, cfg.max_samples)
        classnames, templates = rows.classes, cfg.templates
    else:
        rows = CsvLabelRows(
            cfg.path, len(cfg.classnames), cfg.image_column, cfg.label_column, cfg.delimiter, cfg.max_samples, cfg.root
        )
        classnames, templates = cfg.classnames, cfg.templates
    return LabelledDataset(rows, ResizeCenterCrop(image_size), classnames, templates, squash_triggered)
