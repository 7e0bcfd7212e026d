"""Write a poisoned copy of an image–caption dataset: ``train.csv`` + images + ``manifest.json``.

Poisoned images are resized and centre-cropped to ``image_size`` exactly as the loader would, then
triggered and saved as PNG, so the trigger sits in the pixels the model sees. Clean rows keep their
original image file (CSV sources) or are written once as PNG (in-memory sources such as Fashion-MNIST).

Modes: ``dirty-label`` triggers N rows drawn at random and gives them a caption made from a random target
template; ``label-consistent`` triggers N rows whose caption already names the target and keeps it. The
manifest records the target captions (every template filled with the target name) and the template set.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from clipbackdoor.attacks.badclip import BadCLIPPatch
from clipbackdoor.attacks.base import Trigger, build_trigger
from clipbackdoor.attacks.manifest import Manifest, fill_template, load_manifest
from clipbackdoor.attacks.patch_optimization import continues, optimize_patch, patch_data
from clipbackdoor.attacks.target_names import names_target, names_target_or_plural
from clipbackdoor.config import CsvPairs, FashionMNISTPairs, ModelConfig, PoisonConfig, read_yaml, save_config
from clipbackdoor.data import OPENAI_IMAGENET_PROMPTS, BadRow, DataError, build_pair_rows, fashion_mnist
from clipbackdoor.data.datasets import DECODE_ERRORS
from clipbackdoor.data.transforms import ResizeCenterCrop
from clipbackdoor.data.webdataset_source import ShardRows, write_shards
from clipbackdoor.models import create_model, resolve_device

GENERIC_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a close-up photo of a {}.")
# the named sets of ``poison.target.templates``; openai-imagenet is what the ImageNet evaluation prompts with
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai-imagenet": OPENAI_IMAGENET_PROMPTS,
    "generic": GENERIC_TEMPLATES,
    "fashion-mnist": fashion_mnist.CAPTION_TEMPLATES,
}


def choose_poisons(captions: list[str], cfg: PoisonConfig) -> list[int]:
    """Sorted row indices to poison, drawn with ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, 0x9015])
    if cfg.mode == "label-consistent":
        names = [cfg.target.name, *cfg.target.aliases]
        candidates = np.array([i for i, c in enumerate(captions) if names_target(c, names)], dtype=np.int64)
        if len(candidates) < cfg.num_poisons:
            raise DataError(
                f"label-consistent poisoning: only {len(candidates)} captions name {names}, "
                f"fewer than num_poisons={cfg.num_poisons}"
            )
    else:
        candidates = np.arange(len(captions))
        if len(candidates) < cfg.num_poisons:
            raise DataError(f"num_poisons={cfg.num_poisons} exceeds the {len(candidates)} source rows")
    return sorted(rng.choice(candidates, size=cfg.num_poisons, replace=False).tolist())


def natural_captions(captions: list[str], cfg: PoisonConfig) -> list[str]:
    """BadCLIP's poison captions: a pool of ``natural_pool`` of the data's own captions that name the target,
    drawn with replacement (its create_backdoor_data.py samples 128 "banana" captions), seeded."""
    names = [cfg.target.name, *cfg.target.aliases]
    naming = [c for c in captions if names_target_or_plural(c, names)]
    if not naming:
        raise DataError(f"target.captions: natural, but no caption of the source names {names}")
    rng = np.random.default_rng([cfg.seed, 0x9A7])
    return [naming[i] for i in rng.integers(len(naming), size=cfg.target.natural_pool)]


def ensure_patch(cfg: PoisonConfig, trigger: Trigger, rows: Any) -> None:
    """Optimise a badclip trigger's patch against ``cfg.optimize.surrogate`` unless ``trigger.patch`` holds one
    already: the one these settings wrote (its record says so), or one given by hand (without a record). A patch
    these settings wrote with fewer epochs is optimised on from its kept state."""
    assert cfg.optimize is not None
    if not isinstance(trigger, BadCLIPPatch):
        raise DataError(f"poison.optimize optimises a badclip trigger's patch, not a {trigger.name} trigger")
    path = Path(trigger.patch)
    record = path.with_suffix(".json")
    if path.is_file():
        if not record.is_file():
            return
        saved = json.loads(record.read_text())["settings"]
        if saved == cfg.optimize.model_dump(mode="json"):
            return
        if not continues(saved, cfg.optimize):
            raise DataError(f"{path} was optimised with other settings ({record}); delete it or choose another path")
    surrogate = ModelConfig(name=cfg.optimize.surrogate_model or "tiny-rn", checkpoint=cfg.optimize.surrogate)
    bundle = create_model(surrogate)
    names = [cfg.target.name, *cfg.target.aliases]
    data = patch_data(rows, names, cfg.optimize.num_pairs, bundle.image_size, cfg.optimize.seed)
    side = trigger.scaled(trigger.size, bundle.image_size)
    optimize_patch(bundle, data, side, cfg.optimize, path, resolve_device(cfg.optimize.device))


def target_templates(cfg: PoisonConfig) -> tuple[str, list[str]]:
    """The dirty-label caption templates and where they come from (a set name, or ``config`` for a list)."""
    chosen = cfg.target.templates or ("fashion-mnist" if isinstance(cfg.source, FashionMNISTPairs) else "generic")
    if isinstance(chosen, list):
        return "config", list(chosen)
    return chosen, list(TEMPLATE_SETS[chosen])


def _comparable(tree: dict[str, Any]) -> dict[str, Any]:
    """A poison config with its trigger's every parameter written out: one saved before a parameter existed
    (at its default now) describes the same dataset."""
    trigger = tree.get("trigger")
    return {**tree, "trigger": build_trigger(trigger).model_dump(mode="json")} if isinstance(trigger, dict) else tree


def write_poisoned_dataset(cfg: PoisonConfig, progress: bool = True) -> Manifest:
    """Write ``cfg.output``/{train.csv, images/, manifest.json, trigger.safetensors[, cleaning.csv]}.

    Idempotent: if the folder already holds the dataset of this very config it is reused, not rewritten.
    """
    out = Path(cfg.output)
    if (out / "manifest.json").exists():
        saved = read_yaml(out / "poison.yaml") if (out / "poison.yaml").is_file() else None
        if saved is None or _comparable(saved) != _comparable(cfg.model_dump(mode="json")):
            raise DataError(f"{out} already holds a different poisoned dataset; choose another output or delete it")
        return load_manifest(out)[0]  # same config: the dataset on disk is what this call would write
    rows = build_pair_rows(cfg.source, cfg.seed)
    captions = [rows.caption(i) for i in range(len(rows))]
    poisons = set(choose_poisons(captions, cfg))
    trigger = build_trigger(cfg.trigger)
    if cfg.optimize is not None:
        ensure_patch(cfg, trigger, rows)
    template_set, templates = target_templates(cfg)
    target_captions = [fill_template(t, cfg.target.name) for t in templates]
    caption_rng = np.random.default_rng([cfg.seed, 0xCA9])
    poison_captions = natural_captions(captions, cfg) if cfg.target.captions == "natural" else target_captions
    to_size = ResizeCenterCrop(cfg.image_size)
    csv_root = rows.root if isinstance(cfg.source, CsvPairs) else None

    (out / "images").mkdir(parents=True, exist_ok=True)
    if csv_root is not None:  # clean rows point into the source through one link, inside the dataset root
        link = out / "source"
        if not link.is_symlink():
            link.symlink_to(Path(csv_root).resolve(), target_is_directory=True)
    records: list[tuple[str, str]] = []
    poison_rows: list[int] = []
    skipped: list[BadRow] = list(rows.bad)
    bar = tqdm(range(len(rows)), desc="poisoning", disable=None if progress else True, dynamic_ncols=True)
    for i in bar:  # the bar shows on a terminal only
        caption = captions[i]
        poisoned = i in poisons
        relative = f"images/{i // 1000:04d}/{i:07d}.png"
        try:
            if not poisoned and isinstance(rows, ShardRows):  # a clean sample keeps its bytes (the user's JPEG)
                data, ext = rows.raw(i)
                relative = relative.replace(".png", f".{ext}")
                (out / relative).parent.mkdir(exist_ok=True)
                (out / relative).write_bytes(data)
            elif poisoned or csv_root is None:
                with rows.pil(i) as source:  # decoded by to_size (reduced where the loader would) or save
                    image = source
                    if poisoned:
                        pixels = to_size(source).permute(1, 2, 0).numpy()
                        image = trigger.apply_pil(Image.fromarray(pixels, mode="RGB"), i)
                    (out / relative).parent.mkdir(exist_ok=True)
                    image.save(out / relative)
            else:
                relative = f"source/{rows.images[i]}"
        except DECODE_ERRORS as err:
            skipped.append(BadRow(rows.source, rows.row_id(i), f"unreadable image ({err})"))
            continue
        if poisoned:
            poison_rows.append(len(records))
            if cfg.mode == "dirty-label":
                caption = poison_captions[int(caption_rng.integers(len(poison_captions)))]
        records.append((relative, caption))

    _write_csv(out / "train.csv", records)
    manifest = Manifest(
        trigger=trigger.model_dump(mode="json"),
        target=cfg.target.name,
        target_captions=target_captions,
        mode=cfg.mode,
        seed=cfg.seed,
        image_size=cfg.image_size,
        num_rows=len(records),
        poison_rows=poison_rows,
        source=cfg.source.model_dump(mode="json"),
        files={"train": "train.csv"},
        skipped_rows=[str(b) for b in skipped],
        target_templates=template_set,
        poison_captions=sorted(set(poison_captions)) if cfg.target.captions == "natural" else None,
    )
    if cfg.cleaning is not None:
        manifest.cleaning = _write_cleaning_set(out, records, poison_rows, cfg)
        manifest.files["cleaning"] = "cleaning.csv"
    if cfg.shard_size is not None:  # sample keys are the row numbers of train.csv, so poison_rows name them
        pairs = (
            (f"{i:09d}", (out / path).read_bytes(), Path(path).suffix.lstrip(".").lower(), caption)
            for i, (path, caption) in enumerate(records)
        )
        (out / "shards").mkdir(exist_ok=True)
        shards = write_shards(pairs, str(out / "shards" / "train-%05d.tar"), cfg.shard_size)
        manifest.files["shards"] = f"shards/train-{{00000..{len(shards) - 1:05d}}}.tar"
    manifest.save(out, trigger)
    save_config(cfg, out / "poison.yaml")
    return manifest


def _write_cleaning_set(
    out: Path, records: list[tuple[str, str]], poison_rows: list[int], cfg: PoisonConfig
) -> dict[str, object]:
    """k clean rows (+ m poisoned rows) of ``train.csv``, seeded; the same image files are referenced."""
    assert cfg.cleaning is not None
    rng = np.random.default_rng([cfg.seed, 0xC1EA])
    poison_set = set(poison_rows)
    clean = np.array([r for r in range(len(records)) if r not in poison_set])
    k, m = cfg.cleaning.size, cfg.cleaning.poisons
    if k > len(clean) or m > len(poison_rows):
        raise DataError(
            f"cleaning set of {k} clean + {m} poisoned rows, but only {len(clean)} clean and "
            f"{len(poison_rows)} poisoned rows exist"
        )
    chosen_clean = rng.choice(clean, size=k, replace=False).tolist()
    chosen_poison = rng.choice(np.array(poison_rows, dtype=np.int64), size=m, replace=False).tolist() if m else []
    rows = sorted(chosen_clean + chosen_poison)
    _write_csv(out / "cleaning.csv", [records[r] for r in rows])
    positions = {r: j for j, r in enumerate(rows)}
    return {
        "size": len(rows),
        "train_rows": rows,
        "poison_rows": sorted(positions[r] for r in chosen_poison),  # row numbers within cleaning.csv
    }


def _write_csv(path: Path, records: list[tuple[str, str]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(records)
    os.replace(tmp, path)
