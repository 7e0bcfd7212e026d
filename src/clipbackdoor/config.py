"""Typed experiment configs: YAML files plus command-line dot-overrides, validated before anything runs.

A config is a tree of pydantic models that forbid unknown keys, so a typo such as ``train.lrr`` fails at
load time with the key's full dotted path instead of being silently ignored hours into a run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

import yaml
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

M = TypeVar("M", bound=BaseModel)


def class_index(
    classnames: Sequence[str], spec: str | int, key: str, remedy: str = "give the class index instead"
) -> int:
    """The index of the class ``spec`` names in ``classnames``: an index as given, or a name that occurs once.

    ``list.index`` would silently take the first of a repeated name, and ImageNet repeats two (open_clip's
    list: 'missile' at 657 and 744, 'sunglasses' at 836 and 837), so an ambiguous name is refused with its
    indices and ``remedy``. ``key`` names the setting that gave ``spec``.
    """
    if isinstance(spec, int):
        if not 0 <= spec < len(classnames):
            raise ValueError(f"{key}: class index {spec} outside [0, {len(classnames)})")
        return spec
    matches = [i for i, name in enumerate(classnames) if name == spec]
    if not matches:
        raise ValueError(f"{key}: {spec!r} is not among the class names")
    if len(matches) > 1:
        raise ValueError(f"{key}: class name {spec!r} is ambiguous, it is class {matches}; {remedy}")
    return matches[0]


class Resolver(Protocol):
    """What a component's name means: triggers, defenses and loss terms are known only to their registries,
    which sit above this module. The schemas here check shape; a resolver (``clipbackdoor.resolve``, above the
    registries) is handed to validation as pydantic context and checks names and fills what a component
    implies, so that its errors still name the key and the file."""

    def trigger(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The trigger's parameters, validated and with defaults filled."""
        ...

    def defense(self, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The defense's parameters, validated, and the cleaning objective it sets."""
        ...

    def objective_term(self, name: str, spec: float | dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the key if ``name`` is no loss or ``spec`` no parameters of it."""
        ...

    def model_defaults(self, name: str) -> dict[str, Any]:
        """Model settings the loss ``name`` needs where a config leaves them unset (SigLIP's logit bias)."""
        ...


def _resolver(info: ValidationInfo) -> Resolver | None:
    return (info.context or {}).get("resolver")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_placeholder(template: str) -> str:
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' for the class name")
    return template


Template = Annotated[str, AfterValidator(_one_placeholder)]


# ----------------------------------------------------------------------------------------------- data
class FashionMNISTPairs(_Strict):
    """Image–caption pairs made from Fashion-MNIST: each image gets one seeded caption from templates."""

    source: Literal["fashion-mnist"] = "fashion-mnist"
    root: str | None = Field(None, description="folder with the IDX .gz files; default: the Debian package's")
    split: Literal["train", "test"] = "train"
    max_samples: int | None = Field(None, ge=1, description="use the first N samples (quick runs)")
    templates: list[Template] | None = Field(None, description="caption templates with one '{}'; default: built in")
    use_synonyms: bool = Field(True, description="fill templates with class-name synonyms as well")


class CsvPairs(_Strict):
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


class WebDatasetPairs(_Strict):
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


class FashionMNISTLabelled(_Strict):
    """Labelled Fashion-MNIST for zero-shot evaluation (the test split by default)."""

    source: Literal["fashion-mnist"] = "fashion-mnist"
    root: str | None = None
    split: Literal["train", "test"] = "test"
    max_samples: int | None = Field(None, ge=1)
    templates: list[Template] | None = Field(None, description="prompt templates; default: the built-in set")


class CsvLabelled(_Strict):
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


class ImageNetLabelled(_Strict):
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


class TorchvisionLabelled(_Strict):
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


class DataConfig(_Strict):
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


# ---------------------------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    name: str = Field("tiny-rn", description="open_clip model name (RN50, ViT-B-32, ...) or ours (tiny-rn)")
    checkpoint: str | None = Field(None, description="weights to start from: ours, CleanCLIP, open_clip, a state dict")
    checkpoint_quick_gelu: bool | None = Field(
        None,
        description="whether model.checkpoint was trained with QuickGELU (OpenAI's CLIP, CleanCLIP, CyCLIP were); "
        "default: read off its layout. One that does not match the model ('-quickgelu' names have it) is refused",
    )
    pretrained: str | None = Field(
        None, description="an open_clip pretrained tag (openai, laion2b_s34b_b79k, ...) whose weights are on disk"
    )
    cache_dir: str | None = Field(None, description="where open_clip's pretrained weights are (default: its cache)")
    image_size: int | None = Field(None, ge=8, description="override the model's input size")
    init_logit_scale: float | None = Field(None, description="default: ln(1/0.07), as CLIP")
    init_logit_bias: float | None = Field(None, description="a learned logit bias (SigLIP sets -10)")


# ---------------------------------------------------------------------------------------------- train
class TrainConfig(_Strict):
    epochs: int = Field(3, ge=0)
    batch_size: int = Field(
        256, ge=2, description="global batch: pairs per optimizer step over all processes (the contrastive batch)"
    )
    micro_batch: int | None = Field(
        None,
        ge=1,
        description="pairs per forward pass on one process, the BatchNorm group; default: the per-process batch. "
        "Fewer than that accumulates exactly (negatives still from the whole global batch)",
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(50, ge=0, description="optimizer steps of linear warmup before the cosine")
    min_lr: float = Field(0.0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    log_every: int = Field(50, ge=1, description="write a step record to metrics.jsonl every N steps")
    progress: bool = True
    max_grad_norm: float | None = Field(None, gt=0)
    keep_last: int | None = Field(None, ge=1, description="keep only the newest N epoch checkpoints")
    channels_last: bool = Field(False, description="NHWC memory layout for the image tower (faster convs on GPU)")
    compile: bool = Field(False, description="torch.compile the model for training")
    grad_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, more time")

    @model_validator(mode="before")
    @classmethod
    def _no_accum_steps(cls, data: Any) -> Any:
        if isinstance(data, dict) and "accum_steps" in data:
            raise ValueError(
                "train.accum_steps is derived now: train.batch_size is the global batch and train.micro_batch "
                "what one forward pass sees; accumulation = batch_size / processes / micro_batch"
            )
        return data

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class EDAConfig(_Strict):
    alpha_sr: float = Field(0.1, ge=0, le=1, description="share of words replaced by WordNet synonyms")
    alpha_ri: float = Field(0.1, ge=0, le=1, description="share of words inserted (synonyms)")
    alpha_rs: float = Field(0.1, ge=0, le=1, description="share of words swapped")
    p_rd: float = Field(0.1, ge=0, le=1, description="probability of deleting each word")


class AugmentConfig(_Strict):
    """The augmented views of the self-supervised losses; made only when an objective needs them."""

    image: Literal["autoaugment-imagenet"] = "autoaugment-imagenet"
    text: EDAConfig = Field(default_factory=EDAConfig)
    fresh_each_epoch: bool = Field(
        True, description="draw new views every epoch (the reference code drew them once and reused them)"
    )


class RetrievalConfig(_Strict):
    """Image↔text retrieval on a CSV of pairs (CleanCLIP layout); with ``eval.attack``, retrieval ASR too."""

    path: str
    k: list[int] = Field(default_factory=lambda: [1, 5, 10])
    max_samples: int | None = Field(None, ge=1)
    asr: list[Literal["any", "half"]] = Field(
        default_factory=lambda: ["any", "half"],
        description="retrieval ASR@k definitions to record (retrieval_asr_<definition>_r<k>): a triggered image "
        "succeeds when among its k nearest captions there is one naming the target (any), or at least "
        "max(1, k // 2) of them (half: the reference code's)",
    )


class EvalConfig(_Strict):
    batch_size: int = Field(512, ge=1)
    every_epoch: bool = Field(True, description="evaluate at epoch 0 and after every epoch")
    attack: str | None = Field(
        None, description="a poison manifest.json: adds attack success rate and robust accuracy, same pass"
    )
    retrieval: RetrievalConfig | None = None


# --------------------------------------------------------------------------------------------- poison
class TargetConfig(_Strict):
    name: str = Field(description="target class name, as written in captions and in the eval class names")
    templates: list[Template] | Literal["openai-imagenet", "generic", "fashion-mnist"] | None = Field(
        None,
        description="caption templates for dirty-label poisons: a list with one '{}' each, or a named set "
        "(openai-imagenet: the 80 prompts of the ImageNet evaluation, as the study); default: fashion-mnist for "
        "a Fashion-MNIST source, else generic (4 'a photo of a {}.'-like templates)",
    )
    aliases: list[str] = Field(
        default_factory=list, description="other words that name the target (label-consistent selection)"
    )


class CleaningSetConfig(_Strict):
    size: int = Field(ge=1, description="k clean pairs drawn from the non-poisoned part")
    poisons: int = Field(0, ge=0, description="m poisoned pairs mixed in (the poisoned-cleaning-set ablation)")


class PoisonConfig(_Strict):
    source: PairSource = Field(default_factory=FashionMNISTPairs)
    output: str = Field(description="folder to write train.csv, images/, manifest.json (and cleaning.csv)")
    trigger: dict[str, Any] = Field(description="trigger name and parameters, e.g. {name: badnet, size: 16}")
    target: TargetConfig
    mode: Literal["dirty-label", "label-consistent"] = "dirty-label"
    num_poisons: int = Field(ge=0)
    image_size: int = Field(224, ge=8, description="poisoned images are resized + cropped to this, then triggered")
    seed: int = 0
    cleaning: CleaningSetConfig | None = None
    shard_size: int | None = Field(
        None, ge=1, description="also write the poisoned pairs as WebDataset shards of this many samples"
    )

    @field_validator("trigger")
    @classmethod
    def _valid_trigger(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        resolver = _resolver(info)
        return resolver.trigger(v) if resolver else v


class WandbConfig(_Strict):
    """A Weights & Biases run; offline by default, so a run never needs the network (``wandb sync`` uploads it)."""

    project: str
    mode: Literal["offline", "online", "disabled"] = "offline"
    entity: str | None = Field(None, description="user or team; default: the account's default entity")
    dir: str | None = Field(None, description="where W&B writes its files (a wandb/ folder); default: the run folder")


class LogConfig(_Strict):
    """External loggers; each sees the records of metrics.jsonl (optional extras: ``pip install .[tensorboard]``,
    ``.[wandb]``)."""

    tensorboard: bool = Field(False, description="write every record to <run>/tensorboard as scalars")
    wandb: WandbConfig | None = Field(None, description="send every record to a W&B run, e.g. {project: clip}")


class ExperimentConfig(_Strict):
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    objective: dict[str, float | dict[str, Any]] = Field(
        default_factory=lambda: {"mmcl": 1.0},
        description="weighted losses: {mmcl: 1.0, ssl: 1.0} or {ssl: {weight: 1.0, image: 1.0, text: 0.5}}",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    poison: PoisonConfig | None = Field(None, description="read by `clipbackdoor poison`")
    defense: dict[str, Any] | None = Field(
        None, description="cleaning defense and its parameters, e.g. {name: cleanclip, ssl: 1.0}; sets the objective"
    )

    @model_validator(mode="before")
    @classmethod
    def _defense_sets_objective(cls, data: Any, info: ValidationInfo) -> Any:
        """A defense owns the cleaning objective: its terms replace ``objective``."""
        resolver = _resolver(info)
        if isinstance(data, dict) and data.get("defense") and resolver:
            defense, objective = resolver.defense(data["defense"])
            data = {**data, "defense": defense, "objective": objective}
        return data

    @field_validator("objective")
    @classmethod
    def _known_objectives(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if not v:
            raise ValueError("needs at least one loss, e.g. {mmcl: 1.0}")
        resolver = _resolver(info)
        for name, spec in v.items() if resolver else ():
            resolver.objective_term(name, spec)
        return v

    @model_validator(mode="after")
    def _objective_model_defaults(self, info: ValidationInfo) -> ExperimentConfig:
        """Fill model settings an objective needs (SigLIP's logit bias) where the config left them unset."""
        resolver = _resolver(info)
        for name in self.objective if resolver else ():
            for key, value in resolver.model_defaults(name).items():
                if getattr(self.model, key) is None:
                    setattr(self.model, key, value)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# -------------------------------------------------------------------------------------------- loading
def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``a.b.c`` sets tree[a][b][c]; ``\\.`` is a literal dot (``space.train\\.lr.grid``: a sweep parameter)."""
    keys = [k.replace("\\.", ".") for k in re.split(r"(?<!\\)\.", dotted)]
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{'.'.join(keys[: i + 1])}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``true``, ``[1, 2]``).

    YAML 1.1 reads ``1e-4`` as a string; pydantic's numeric fields accept it, so no special case is needed.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': value is not valid YAML ({err})") from err
        _set_dotted(tree, key.strip(), value)
    return tree


SOURCE_TAGS = (
    "fashion-mnist",
    "csv",
    "imagenet",
    "torchvision",
    "webdataset",
)  # pydantic puts the union tag in error paths


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in SOURCE_TAGS))
        lines.append(f"  {loc or '<root>'}: {e['msg']}")
    return "\n".join(lines)


def builtin_config_path(name: str) -> Path | None:
    """The packaged config called ``name`` (``demo`` -> configs/demo.yaml, ``defenses/par``), if there is one."""
    candidate = resources.files("clipbackdoor") / "configs" / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(tree).__name__}")
    return tree


def merge_trees(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in: nested mappings merge, anything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge_trees(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def validate_as(
    model: type[M], tree: dict[str, Any], overrides: list[str], origin: str, resolver: Resolver | None = None
) -> M:
    """Apply overrides to a raw config tree and validate it as ``model``; errors name the key and the file.
    Without a ``resolver`` only the shape is checked: component names are taken as given (a saved run's
    config, already resolved when it was written)."""
    tree = apply_overrides(tree, list(overrides))
    try:
        return model.model_validate(tree, context={"resolver": resolver})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def resolve_yaml(source: str | Path) -> Path:
    """A YAML path as given, or the built-in config of that name (``demo``, ``study-fmnist``)."""
    path = Path(source)
    if path.is_file():
        return path
    builtin = builtin_config_path(str(source))
    if builtin is None:
        raise ConfigError(f"config '{source}' is neither a file nor a built-in config")
    return builtin


def read_config_tree(source: str | Path | None) -> tuple[dict[str, Any], str]:
    """The raw tree of a YAML path or a built-in name (empty for ``None``: the defaults), and its origin.

    Relative data paths inside the file stay relative to the working directory, as typed by the user.
    """
    if source is None:
        return {}, "defaults"
    path = resolve_yaml(source)
    return read_yaml(path), str(path)


def save_config(cfg: BaseModel, path: Path) -> None:
    """Write the resolved config so a run directory says exactly what produced it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
