"""Model factory: any open_clip architecture at random init, our small configs, or a checkpoint to resume.

Our small configs (``tiny-rn``, ``tiny-vit``) are JSON files registered with open_clip's own registry, so
they are built by the same code path as RN50 and need no network: nothing here loads pretrained weights
unless a local checkpoint is named.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from clipbackdoor.config import ConfigError, ModelConfig
from clipbackdoor.data.transforms import Normalize

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


def create_model(cfg: ModelConfig) -> ClipBundle:
    """Build the model a config names, at random init (seed the global RNG first) or from ``checkpoint``."""
    from clipbackdoor.train.checkpoint import checkpoint_model_name, load_weights

    name = cfg.name
    if cfg.checkpoint is not None:
        name = checkpoint_model_name(cfg.checkpoint) or name
    if name not in open_clip.list_models():
        raise ConfigError(f"model.name: unknown model {name!r}; ours: {list(OUR_MODELS)}, or any open_clip name")
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
    if cfg.checkpoint is not None:
        load_weights(model, cfg.checkpoint)
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
