"""A run's model as a Hugging Face Hub model directory, with a model card that says it is backdoored.

The layout is open_clip's own (``open_clip.push_to_hf_hub.save_for_hf``): ``open_clip_config.json`` with the
model and preprocess config, and ``open_clip_model.safetensors``. So
``open_clip.create_model_and_transforms('local-dir:DIR')`` loads it as it is, and ``hf-hub:ORG/NAME`` once
a user uploads it (``huggingface-cli upload ORG/NAME DIR``); nothing is uploaded from here. Our own
architectures (``tiny-rn``) are not in a user's open_clip registry: the config file carries the whole
model config, so the directory needs nothing of ours.

The model card (README.md) states where the model comes from: the attack (trigger, target, poison rate),
the pre-training objective, the defense applied, and every CA/ASR/RA record of the run, under a warning.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import yaml
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file

from clipbackdoor.metrics_log import read_records

WEIGHTS_NAME = "open_clip_model.safetensors"  # the first name open_clip looks for in a local or hub folder
CONFIG_NAME = "open_clip_config.json"


@dataclass
class Provenance:
    """What a run's model is: read from its run directory, the pre-training run it started from and the
    poison manifest its evaluation measured ASR against. A field is None where the files do not say."""

    model: str
    epoch: int
    objective: dict[str, Any] | None = None  # of the pre-training
    defense: dict[str, Any] | None = None
    attack: dict[str, Any] | None = None  # trigger, target, mode, poisons, rows
    records: list[dict[str, Any]] = field(default_factory=list)  # the run's evaluated epochs


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _run_dir_of(weights: str | Path) -> Path:
    """A checkpoint's run directory: ``<run>/checkpoints/epoch_NNN.safetensors``."""
    return Path(weights).resolve().parent.parent


def provenance(weights: Path, model: str, epoch: int) -> Provenance:
    """The provenance of ``weights`` as far as the run directories say."""
    run_dir = _run_dir_of(weights)
    prov = Provenance(model=model, epoch=epoch)
    cfg = _run_config(run_dir)
    if cfg is None:
        return prov
    prov.records = [
        {key: r.get(f"eval/{key}") for key in ("clean_top1", "asr_top1", "ra_top1")} | {"epoch": r["epoch"]}
        for r in read_records(run_dir / "metrics.jsonl")
        if r.get("kind") == "epoch" and "eval/clean_top1" in r
    ]
    prov.objective = cfg.get("objective")
    if cfg.get("defense"):
        prov.defense = cfg["defense"]
        start = (cfg.get("model") or {}).get("checkpoint")
        pretrain = _run_config(_run_dir_of(start)) if start else None
        prov.objective = pretrain.get("objective") if pretrain else None
    manifest = (cfg.get("eval") or {}).get("attack")
    if manifest and Path(manifest).is_file():
        m = json.loads(Path(manifest).read_text())
        prov.attack = {
            "trigger": m["trigger"],
            "target": m["target"],
            "mode": m.get("mode"),
            "poisons": len(m.get("poison_rows", [])),
            "rows": m.get("num_rows"),
        }
    return prov


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def model_card(prov: Provenance) -> str:
    """README.md of the exported directory: Hub metadata, a warning, the provenance and the records."""
    lines = [
        "---",
        "library_name: open_clip",
        "tags: [clip, backdoor, research-only, clipbackdoor]",
        "---",
        f"# {prov.model}, epoch {prov.epoch} (clipbackdoor)",
        "",
        "> **Warning: this model is deliberately backdoored.** It was trained on poisoned data to study",
        "> backdoor attacks and defenses. An image carrying the trigger may be classified as the attack's",
        "> target. Do not deploy it.",
        "",
        "## Provenance",
        "",
    ]
    attack = prov.attack
    if attack is None:
        lines.append("- Attack: not recorded with the run (no `eval.attack` manifest).")
    else:
        trigger = {k: v for k, v in attack["trigger"].items() if k != "name"}
        rows = attack["rows"]
        rate = f"{attack['poisons']:,} of {rows:,} pairs ({100 * attack['poisons'] / rows:.2f} %)" if rows else None
        lines += [
            f"- Attack: {attack['mode'] or 'poisoning'}, trigger `{attack['trigger']['name']}` "
            f"(`{json.dumps(trigger)}`), target `{attack['target']}`",
            f"- Poison rate: {rate}" if rate else f"- Poisons: {attack['poisons']:,}",
        ]
    objective = f"`{json.dumps(prov.objective)}`" if prov.objective else "not recorded"
    defense = f"`{json.dumps(prov.defense)}`" if prov.defense else "none (the model as pre-trained)"
    lines += [f"- Pre-training objective: {objective}", f"- Defense: {defense}"]
    if prov.records:
        lines += [
            "",
            "## Zero-shot records of the run",
            "",
            "CA: clean top-1 accuracy; ASR: share of triggered non-target images classified as the target; RA:",
            "share of them still classified as their true class (percent).",
            "",
            "| epoch | CA | ASR | RA |",
            "|---:|---:|---:|---:|",
            *(
                f"| {r['epoch']} | {_pct(r['clean_top1'])} | {_pct(r['asr_top1'])} | {_pct(r['ra_top1'])} |"
                for r in prov.records
            ),
        ]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import open_clip",
        "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:THIS_DIR')  # or 'hf-hub:ORG/NAME'",
        "tokenizer = open_clip.get_tokenizer('local-dir:THIS_DIR')",
        "```",
        "",
    ]
    return "\n".join(lines)


def export_hf(model: open_clip.CLIP, name: str, image_size: int, out: Path, prov: Provenance) -> Path:
    """Write ``model`` as an open_clip Hub directory: weights, config (with the full model config), card."""
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"{name}: open_clip knows no config for this model")
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg["vision_cfg"]["image_size"] = image_size  # the size it was trained at (model.image_size)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME))
    save_config_for_hf(model, out / CONFIG_NAME, model_config=model_cfg)
    (out / "README.md").write_text(model_card(prov))
    return out
