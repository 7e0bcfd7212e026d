"""Where data comes from: the pair sources training reads and the labelled sources zero-shot evaluation reads."""

from __future__ import annotations

from typing import Annotated, Literal

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from clipbackdoor.config.base import Strict, Template, class_index


# ----------------------------------------------------------------------------------------------- data
class FashionMNISTPairs(Strict):
    """Image–caption pairs made from Fashion-MNIST: each image gets one seeded caption from templates."""

    source: Literal["fashion-mnist"] = "fashion-mnist"
    root: str | None = Field(None, description="folder with the IDX .gz files; default: the Debian package's")
    split: Literal["train", "test"] = "train"
    max_samples: int | None = Field(None, ge=1, description="use the first N samples (quick runs)")
    templates: list[Template] | None = Field(None, description="caption templates with one '{}'; default: built in")
    use_synonyms: bool = Field(True, description="fill templates with class-name synonyms as well")


class CsvPairs(Strict):
    """CleanCLIP's CSV layout: one row per pair, image paths relative to the CSV file."""

    source: Literal["csv"] = "csv"
    path: str
    image_column: str = "image"
    caption_column: str = "caption"
    delimiter: str = ","
    max_samples: int | None = Field(None, ge=1)
    root: str | None = Field(None, description="image paths (relative to the CSV) stay inside it; default: its folder")
    expected_pairs: int | None = Field(
        None, ge=1, description="pairs the CSV will hold; `plan` uses it while the file is not there yet"
    )


class WebDatasetPairs(Strict):
    """WebDataset shards in img2dataset's layout (``<key>.jpg`` + ``<key>.txt`` per sample).

    ``access: stream``: each rank reads ``epoch_samples / world size`` pairs per epoch through a seeded
    shuffle buffer; ``resampled`` draws shards with replacement (any number of shards, ranks and workers),
    otherwise every rank and worker cycles through its own share of the shards. The stream's order depends
    on the number of ranks. ``access: index``: local ``.tar`` shards are indexed once and read like a CSV,
    in one global order whatever the number of processes (every epoch is then exactly the whole set)."""

    source: Literal["webdataset"] = "webdataset"
    urls: str | list[str] = Field(description="shard paths; brace patterns expand: data/{00000..00099}.tar")
    access: Literal["stream", "index"] = "stream"
    epoch_samples: int | None = Field(
        None, ge=1, description="pairs per epoch over all ranks (the dataset size, usually); needed to stream"
    )
    image_keys: list[str] = Field(default_factory=lambda: ["jpg", "png", "jpeg", "webp"])
    caption_key: str = "txt"
    shuffle_buffer: int = Field(1000, ge=1)
    resampled: bool = True

    @model_validator(mode="after")
    def _stream_needs_epoch_samples(self) -> WebDatasetPairs:
        if self.access == "stream" and self.epoch_samples is None:
            raise ValueError("epoch_samples is needed to stream shards (or set access: index for local .tar files)")
        return self


class FashionMNISTLabelled(Strict):
    """Labelled Fashion-MNIST for zero-shot evaluation (the test split by default)."""

    source: Literal["fashion-mnist"] = "fashion-mnist"
    root: str | None = None
    split: Literal["train", "test"] = "test"
    max_samples: int | None = Field(None, ge=1)
    templates: list[Template] | None = Field(None, description="prompt templates; default: the built-in set")


class CsvLabelled(Strict):
    """A CSV of ``image,label`` rows (label = class index) with class names and prompt templates."""

    source: Literal["csv"] = "csv"
    path: str
    image_column: str = "image"
    label_column: str = "label"
    delimiter: str = ","
    classnames: list[str]
    templates: list[Template] = Field(default_factory=lambda: ["a photo of a {}."])
    max_samples: int | None = Field(None, ge=1)
    root: str | None = Field(None, description="image paths (relative to the CSV) stay inside it; default: its folder")


class ImageNetLabelled(Strict):
    """ImageNet-1K val: a folder of images and a labels file, with open_clip's 1000 class names and the 80
    OpenAI prompt templates. ``labels``: a text file of ``<image> <class index>`` lines, or CleanCLIP's
    ``labels.csv`` (``image,label`` columns)."""

    source: Literal["imagenet"] = "imagenet"
    labels: str
    folder: str | None = Field(None, description="where the image paths start; default: the labels file's folder")
    max_samples: int | None = Field(None, ge=1)
    templates: list[Template] | None = Field(None, description="default: open_clip's 80 OpenAI templates")
    classes: list[str | int] | None = Field(
        None,
        description="evaluate over these ImageNet classes only, by name or index (a subset: images of others are "
        "left out); a name ImageNet repeats (missile, sunglasses) must be given by index",
    )

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: list[str | int] | None) -> list[str | int] | None:
        unknown = [name for name in v or [] if isinstance(name, str) and name not in IMAGENET_CLASSNAMES]
        if unknown:
            raise ValueError(f"not ImageNet class names (open_clip's list): {unknown[:5]}")
        for j, spec in enumerate(v or []):
            class_index(IMAGENET_CLASSNAMES, spec, f"classes[{j}]")  # an ambiguous name or an index out of range
        return v


class TorchvisionLabelled(Strict):
    """A torchvision dataset already on disk (CIFAR10, CIFAR100, MNIST, ...): nothing is downloaded."""

    source: Literal["torchvision"] = "torchvision"
    name: str = Field(description="torchvision.datasets class, e.g. CIFAR10")
    root: str
    split: Literal["train", "test"] = "test"
    max_samples: int | None = Field(None, ge=1)
    templates: list[Template] = Field(default_factory=lambda: ["a photo of a {}."])


PairSource = Annotated[FashionMNISTPairs | CsvPairs | WebDatasetPairs, Field(discriminator="source")]
LabelledSource = Annotated[
    FashionMNISTLabelled | CsvLabelled | ImageNetLabelled | TorchvisionLabelled, Field(discriminator="source")
]


class DataConfig(Strict):
    train: PairSource = Field(default_factory=FashionMNISTPairs)
    eval: LabelledSource = Field(default_factory=FashionMNISTLabelled)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the main one)")
    prefetch_factor: int | None = Field(None, ge=1, description="batches each worker loads ahead (default 2)")
    max_bad_rows: int = Field(
        100, ge=0, description="corrupt images / empty captions skipped before the run stops with an error"
    )
    decode: Literal["cpu", "gpu"] = Field(
        "cpu",
        description="where training JPEGs are decoded, resized and AutoAugmented: in the loader workers (cpu), or "
        "batched on the training device (gpu: nvJPEG, for nodes whose CPUs cannot feed their GPUs; see plan)",
    )
