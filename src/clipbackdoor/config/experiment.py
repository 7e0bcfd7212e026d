"""The experiment config: model, training, augmentation, evaluation, poisoning, logging, and the objective or
defense by name. The schemas check shape; what a component's name means is checked by a :class:`Resolver`
handed in as pydantic context (``clipbackdoor.resolve``, above the registries), so this package imports none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from clipbackdoor.config.base import Strict, Template
from clipbackdoor.config.sources import DataConfig, FashionMNISTPairs, PairSource


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

    def view_policy(self, terms: dict[str, Any]) -> dict[str, Any]:
        """``augment`` settings (image policy, fixed captions) the terms' reference codes make their views by."""
        ...


def _resolver(info: ValidationInfo) -> Resolver | None:
    return (info.context or {}).get("resolver")


# ---------------------------------------------------------------------------------------------- model
class ModelConfig(Strict):
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
class TrainConfig(Strict):
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


class EDAConfig(Strict):
    alpha_sr: float = Field(0.1, ge=0, le=1, description="share of words replaced by WordNet synonyms")
    alpha_ri: float = Field(0.1, ge=0, le=1, description="share of words inserted (synonyms)")
    alpha_rs: float = Field(0.1, ge=0, le=1, description="share of words swapped")
    p_rd: float = Field(0.1, ge=0, le=1, description="probability of deleting each word")


class AugmentConfig(Strict):
    """The augmented views of the self-supervised losses; made only when an objective needs them."""

    image: Literal["autoaugment-imagenet", "simclr"] | None = Field(
        None,
        description="image views: AutoAugment's ImageNet policy or SimCLR-style; default: the objective's (AutoAugment "
        "for ssl, SimCLR for roclip and safeclip, as their codes)",
    )
    text: EDAConfig = Field(default_factory=EDAConfig)
    fresh_each_epoch: bool = Field(
        True, description="draw new views every epoch (CleanCLIP's code drew them once and reused them)"
    )
    fixed_captions: bool | None = Field(
        None,
        description="draw the EDA captions once, as when the data set is built; default: the objective's (true for "
        "roclip and safeclip, as their codes)",
    )


class RetrievalConfig(Strict):
    """Image↔text retrieval on a CSV of pairs (CleanCLIP layout); with ``eval.attack``, retrieval ASR too."""

    path: str
    k: list[int] = Field(default_factory=lambda: [1, 5, 10])
    max_samples: int | None = Field(None, ge=1)
    asr: list[Literal["any", "half", "study"]] = Field(
        default_factory=lambda: ["any", "half", "study"],
        description="retrieval ASR@k definitions to record (retrieval_asr_<definition>_r<k>). Ours, on a gallery "
        "with the filled target captions added and images whose caption names the target left out: one caption "
        "naming the target among the k nearest (any), or max(1, k // 2) of them (half). The study's (study): the "
        "test captions only, every image triggered, max(1, k // 2) hits among captions naming the target "
        "(plurals too) and the semantic_k nearest to the target captions' mean",
    )
    semantic_k: int = Field(
        20, ge=0, description="study definition: captions nearest to the target captions' mean that count as hits"
    )


class EvalConfig(Strict):
    batch_size: int = Field(512, ge=1)
    every_epoch: bool = Field(True, description="evaluate at epoch 0 and after every epoch")
    attack: str | None = Field(
        None, description="a poison manifest.json: adds attack success rate and robust accuracy, same pass"
    )
    retrieval: RetrievalConfig | None = None
    triggered_copy: Literal["crop", "squash"] = Field(
        "crop",
        description="what the trigger is applied to: crop, the clean copy's resized, centre-cropped pixels; "
        "squash, the whole image resized to the model's size (aspect ratio lost), as the study evaluated",
    )


# --------------------------------------------------------------------------------------------- poison
class TargetConfig(Strict):
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
    captions: Literal["templates", "natural"] = Field(
        "templates",
        description="dirty-label captions: templates filled with the target, or natural, the data's own captions "
        "that name it (BadCLIP's: natural_pool of them drawn with replacement, each poison one of the pool)",
    )
    natural_pool: int = Field(128, ge=1, description="natural captions: the pool's size (BadCLIP's 128)")


class CleaningSetConfig(Strict):
    size: int = Field(ge=1, description="k clean pairs drawn from the non-poisoned part")
    poisons: int = Field(0, ge=0, description="m poisoned pairs mixed in (the poisoned-cleaning-set ablation)")


class PatchOptimization(Strict):
    """BadCLIP's trigger optimisation (src/embeding_optimize_patch.py): a patch trained against a frozen
    surrogate CLIP; the defaults are its README's command. See :mod:`clipbackdoor.attacks.patch_optimization`."""

    surrogate: str = Field(description="the frozen model the patch is optimised against: a checkpoint or run dir")
    surrogate_model: str | None = Field(
        None, description="the surrogate's architecture where its checkpoint does not record it (ours do)"
    )
    loss: Literal["dual", "text"] = Field(
        "dual",
        description="dual: the CLIP loss to target captions + weight x a triplet toward target-image embeddings "
        "and away from the clean ones (the paper's two parts); text: the CLIP loss only (the ablation)",
    )
    margin: float = Field(
        1.0, ge=0, description="the triplet's margin on unit embeddings (torch's default, its code's)"
    )
    weight: float = Field(
        500.0,
        ge=0,
        description="the triplet term's weight: its code's own default. Lower (1) lets the CLIP term, which with "
        "every caption naming the target only collapses the patched images together, move them away from the target",
    )
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=2, description="pairs per step; also the positives drawn per step")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate (its default, as the reference)")
    num_pairs: int = Field(10_000, ge=2, description="images not naming the target, each with a target caption")
    augment_prob: float = Field(0.5, ge=0, le=1, description="per step: the batch's images AutoAugmented first")
    seed: int = 0
    device: str = Field("auto", description="auto: the GPU when there is one")


class PoisonConfig(Strict):
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
    optimize: PatchOptimization | None = Field(
        None, description="optimise a badclip trigger's patch first (written to trigger.patch unless it exists)"
    )

    @field_validator("trigger")
    @classmethod
    def _valid_trigger(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        resolver = _resolver(info)
        return resolver.trigger(v) if resolver else v


class WandbConfig(Strict):
    """A Weights & Biases run; offline by default, so a run never needs the network (``wandb sync`` uploads it)."""

    project: str
    mode: Literal["offline", "online", "disabled"] = "offline"
    entity: str | None = Field(None, description="user or team; default: the account's default entity")
    dir: str | None = Field(None, description="where W&B writes its files (a wandb/ folder); default: the run folder")


class LogConfig(Strict):
    """External loggers; each sees the records of metrics.jsonl (optional extras: ``pip install .[tensorboard]``,
    ``.[wandb]``)."""

    tensorboard: bool = Field(False, description="write every record to <run>/tensorboard as scalars")
    wandb: WandbConfig | None = Field(None, description="send every record to a W&B run, e.g. {project: clip}")


class ExperimentConfig(Strict):
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
        """Fill model settings an objective needs (SigLIP's logit bias) and how its views are made where the
        config left them unset."""
        resolver = _resolver(info)
        for name in self.objective if resolver else ():
            for key, value in resolver.model_defaults(name).items():
                if getattr(self.model, key) is None:
                    setattr(self.model, key, value)
        unset = self.augment.image is None or self.augment.fixed_captions is None
        for key, value in (resolver.view_policy(self.objective) if resolver and unset else {}).items():
            if getattr(self.augment, key) is None:
                setattr(self.augment, key, value)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
