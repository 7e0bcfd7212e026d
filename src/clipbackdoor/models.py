"""Model factory: any open_clip architecture at random init, our small configs, or a checkpoint to resume.

Our small configs (``tiny-rn``, ``tiny-vit``, and their ``-quickgelu`` twins, as open_clip pairs RN50 with
RN50-quickgelu; and ``micro-rn``, tiny-rn at half its image width and a quarter of its text width and embedding,
with one text layer, for rehearsals of the paper's recipes, where a step's compute should not hide the cost of
what a recipe launches, as timm ships its ``test_*`` models) are JSON files registered with open_clip's own
registry, so they are built by the same code path as RN50 and need no network: nothing here loads pretrained
weights unless a local checkpoint is named.

A checkpoint trained with QuickGELU (OpenAI-format: OpenAI's, CleanCLIP's, CyCLIP's) is refused by a model
with nn.GELU, and the other way round: the weights would load and give other text features, so another
zero-shot accuracy. The model's name is the one place the activation is chosen, because it is what runs and
checkpoints record, so refusing with the name to use keeps every later stage right.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.config import ConfigError, ModelConfig
from clipbackdoor.data.transforms import Normalize
from clipbackdoor.interop import Checkpoint, read_checkpoint

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

OUR_MODELS = tuple(sorted(p.stem for p in _CONFIG_DIR.glob("*.json")))


@dataclass
class ClipBundle:
    """A model with what it needs to see data: its tokenizer, input size and pixel normalisation."""

    name: str
    model: open_clip.CLIP
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    normalize: Normalize


def _open_clip_model(name: str, cfg: ModelConfig, extra: dict[str, float]) -> open_clip.CLIP:
    """open_clip's model; pretrained weights only from disk (the hub is switched offline for the call)."""
    if cfg.pretrained is None:
        return open_clip.create_model(name, pretrained=None, force_image_size=cfg.image_size, **extra)
    import huggingface_hub.constants

    offline = huggingface_hub.constants.HF_HUB_OFFLINE  # read at import: the env variable is too late here
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        return open_clip.create_model(
            name, pretrained=cfg.pretrained, cache_dir=cfg.cache_dir, force_image_size=cfg.image_size, **extra
        )
    except Exception as err:  # open_clip and the hub raise many kinds; all mean "not usable here"
        where = cfg.cache_dir or "open_clip's cache (~/.cache/huggingface, ~/.cache/clip)"
        raise ConfigError(
            f"model.pretrained: weights {name}/{cfg.pretrained} are not on disk in {where} and nothing is "
            f"downloaded at run time ({type(err).__name__}: {str(err).splitlines()[0][:200]}); fetch them where "
            "the network is open, or give the file as model.checkpoint"
        ) from None
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = offline


def model_name(cfg: ModelConfig) -> str:
    """The architecture to build: the one our checkpoint records having been trained as, else ``model.name``."""
    return (ckpt.checkpoint_model_name(cfg.checkpoint) if cfg.checkpoint is not None else None) or cfg.name


def has_quick_gelu(name: str) -> bool:
    """Whether open_clip builds ``name`` with QuickGELU (its ``-quickgelu`` configs) instead of nn.GELU."""
    return bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))


def activation_mismatch(cfg: ModelConfig, name: str, checkpoint: Checkpoint) -> str | None:
    """Why ``checkpoint`` must not load into model ``name``, with the fix; None when the activations agree or
    neither ``model.checkpoint_quick_gelu`` nor the file's layout says what it was trained with."""
    if cfg.checkpoint_quick_gelu is not None:
        trained = cfg.checkpoint_quick_gelu
        said = f"model.checkpoint_quick_gelu={str(trained).lower()} says {checkpoint.path} was trained with"
    elif checkpoint.openai_format is not None:
        trained = True
        said = f"{checkpoint.path} is {checkpoint.openai_format}, so it was trained with"
    else:
        return None
    if trained == has_quick_gelu(name):
        return None
    if not trained:
        return f"model.checkpoint: {said} nn.GELU, but {name} has QuickGELU: use a model without '-quickgelu'"
    twin = f"{name}-quickgelu"
    fix = f"use model.name={twin}" if has_quick_gelu(twin) else f"use a config like {name}'s with quick_gelu: true"
    if cfg.checkpoint_quick_gelu is None:  # open_clip's training checkpoints share the layout: the user may know
        fix += "; if it was trained with nn.GELU (an open_clip run), set model.checkpoint_quick_gelu=false"
    return (
        f"model.checkpoint: {said} QuickGELU, but {name} has nn.GELU, which would change its text features "
        f"(and a ViT's image features) and so its zero-shot accuracy: {fix}"
    )


def read_model_checkpoint(cfg: ModelConfig, name: str) -> Checkpoint | None:
    """``model.checkpoint`` read for model ``name`` (None when there is none); a ConfigError when it was
    trained with another activation than ``name`` has."""
    if cfg.checkpoint is None:
        return None
    checkpoint = read_checkpoint(ckpt.resolve_weights(cfg.checkpoint))
    mismatch = activation_mismatch(cfg, name, checkpoint)
    if mismatch is not None:
        raise ConfigError(mismatch)
    return checkpoint


def create_model(cfg: ModelConfig) -> ClipBundle:
    """Build the model a config names, at random init (seed the global RNG first) or from ``checkpoint``."""
    name = model_name(cfg)
    if name not in open_clip.list_models():
        raise ConfigError(f"model.name: unknown model {name!r}; ours: {list(OUR_MODELS)}, or any open_clip name")
    checkpoint = read_model_checkpoint(cfg, name)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns on every model built without pretrained weights: our norm
    try:
        extra = {
            k: v
            for k, v in (("init_logit_scale", cfg.init_logit_scale), ("init_logit_bias", cfg.init_logit_bias))
            if v is not None
        }
        model = _open_clip_model(name, cfg, extra)
    finally:
        root.setLevel(level)
    if checkpoint is not None:
        ckpt.apply_weights(model, checkpoint)
    pre = open_clip.get_model_preprocess_cfg(model)
    size = pre["size"]
    size = size[0] if isinstance(size, tuple | list) else size
    return ClipBundle(
        name=name,
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        image_size=int(size),
        normalize=Normalize(tuple(pre["mean"]), tuple(pre["std"])),
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU; any other name is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
