"""The poison manifest: the one record of what was poisoned, how, and where; every later stage reads it.

``manifest.json`` holds the trigger's parameters, the target and its captions, the mode, the seed and the
indices of the poisoned rows of ``train.csv`` (and of the cleaning set); ``trigger.safetensors`` holds the
realised pattern or warp grid. Whether a row is poisoned is read from here, never inferred from a file path.

``target_captions`` are the caption templates filled with the target name (retrieval ASR puts them in the
gallery). Manifests written before that held the bare templates ('a photo of a {}.'); they are filled when
read, so they load as if written today.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from clipbackdoor.attacks.base import Trigger, build_trigger
from clipbackdoor.data.manifest_format import MANIFEST_FORMAT

FORMAT = MANIFEST_FORMAT


class ManifestError(ValueError):
    """A manifest is missing, malformed or inconsistent; the message names the file and key."""


def fill_template(template: str, target: str) -> str:
    """The caption a template with one '{}' makes for ``target`` (``str.format`` would also read other braces)."""
    return template.replace("{}", target)


@dataclass
class Manifest:
    trigger: dict[str, Any]
    target: str
    target_captions: list[str]
    mode: str
    seed: int
    image_size: int
    num_rows: int
    poison_rows: list[int]
    source: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    cleaning: dict[str, Any] | None = None
    skipped_rows: list[str] = field(default_factory=list)
    format: str = FORMAT
    target_templates: str | None = None  # the template set of target_captions (None: written before it was kept)
    poison_captions: list[str] | None = None  # the natural captions poisons were given (None: target templates)

    def build_trigger(self) -> Trigger:
        return build_trigger(self.trigger, where="manifest.trigger")

    def save(self, folder: Path, trigger: Trigger) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        artifacts = {f"{k}@{self.image_size}": v.contiguous() for k, v in trigger.artifacts(self.image_size).items()}
        if artifacts:
            save_file(artifacts, str(folder / "trigger.safetensors"))
            self.files["trigger"] = "trigger.safetensors"
        path = folder / "manifest.json"
        path.write_text(json.dumps(asdict(self), indent=1))
        return path


_OPTIONAL = ("files", "cleaning", "skipped_rows", "format", "target_templates", "poison_captions")
_REQUIRED = {f for f in Manifest.__dataclass_fields__ if f not in _OPTIONAL}


def load_manifest(path: str | Path) -> tuple[Manifest, Trigger]:
    """Read and validate a manifest; returns it with its trigger, saved artefacts loaded."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"poison manifest not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a {FORMAT} manifest (format={raw.get('format')!r})")
    missing = sorted(_REQUIRED - set(raw))
    unknown = sorted(set(raw) - set(Manifest.__dataclass_fields__))
    if missing or unknown:
        raise ManifestError(f"{path}: missing keys {missing}, unknown keys {unknown}")
    manifest = Manifest(**raw)
    manifest.target_captions = [fill_template(c, manifest.target) for c in manifest.target_captions]
    bad = [r for r in manifest.poison_rows if not (isinstance(r, int) and 0 <= r < manifest.num_rows)]
    if bad:
        raise ManifestError(f"{path}: poison_rows {bad[:5]} outside [0, num_rows={manifest.num_rows})")
    trigger = manifest.build_trigger()
    if "trigger" in manifest.files:
        trigger.load_artifacts(load_file(str(path.parent / manifest.files["trigger"])))
    return manifest, trigger
