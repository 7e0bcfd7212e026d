"""The report of a study with an attack axis: attack × pre-training objective × defense in one table, in the
shape of ABD's Table I (CA / ASR of the poisoned model and of each defense's selected cleaned model), and the
per-sample detection AUROC of each attack.

Each attack's own report (``<study>/attacks/<attack>/report``) holds its details; this one reads the same
files: the sweeps, the seeds axis's ``seeds.json`` and the detection stage's ``filter.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clipbackdoor.config import read_yaml
from clipbackdoor.metrics_log import read_records
from clipbackdoor.report.build import load_sweep, objective_label, write_report
from clipbackdoor.report.seeds import POISONED, SeedRun, epoch_record, spread
from clipbackdoor.report.tables import Table
from clipbackdoor.sweep.select import Point, best_under


@dataclass
class AttackResults:
    """Where one attack's study keeps what the table reads."""

    attack: str
    pretrained: list[Path]  # every pre-training's run directory, in the study's order
    sweeps: list[Path] = field(default_factory=list)
    seeds: Path | None = None
    filtering: Path | None = None
    patch_record: Path | None = None  # an optimised trigger's record (BadCLIP: <patch>.json)


def _seeded(seeds: Path | None) -> dict[tuple[str, str], list[dict]]:
    """(pre-training tag, model) -> the evaluation records of its seeds, for the cells the seeds axis re-ran."""
    if seeds is None or not seeds.is_file():
        return {}
    found: dict[tuple[str, str], list[dict]] = {}
    for entry in json.loads(seeds.read_text()):
        run = SeedRun(**entry)
        found.setdefault((run.pretrain, run.model), []).append(epoch_record(run))
    return {k: v for k, v in found.items() if len(v) > 1}


def _cell(records: list[dict] | None, point: tuple[float, float] | None, note: str = "") -> str:
    """``CA / ASR``; with several seeds their mean ± sd and how many; ``note`` after it."""
    if records:
        ca = spread([r["eval/clean_top1"] for r in records])
        asr = spread([r["eval/asr_top1"] for r in records])
        return f"{ca} / {asr} ({len(records)} seeds){note}"
    return "-" if point is None else f"{point[0]:.2f} / {point[1]:.2f}{note}"


def selected_or_lowest(points: list[Point], asr_threshold: float) -> tuple[Point | None, str]:
    """The study's rule (highest CA at ASR <= threshold); when no setting reaches it, the lowest-ASR point, so
    that a defense that fails shows how far it got."""
    best = best_under(points, asr_threshold)
    if best is not None or not points:
        return best, ""
    return min(points, key=lambda p: (p.asr, -p.ca)), f" (none <= {asr_threshold:g} %: lowest ASR)"


def attack_table(results: list[AttackResults], asr_threshold: float) -> Table:
    """One row per (attack, pre-training): the poisoned (or robustly pre-trained) model's CA / ASR after its
    last epoch and each defense's selected cleaned model; mean ± sd where the seeds axis re-ran the cell."""
    defenses: list[str] = []
    rows_by_key: dict[tuple[str, str], dict[str, str]] = {}
    for r in results:
        seeded = _seeded(r.seeds)
        for run_dir in r.pretrained:
            tag = run_dir.name
            last = [x for x in read_records(run_dir / "metrics.jsonl") if x.get("kind") == "epoch"][-1]
            point = (last["eval/clean_top1"], last["eval/asr_top1"])
            objective = objective_label(read_yaml(run_dir / "config.yaml").get("objective", {}))
            rows_by_key[(r.attack, tag)] = {
                "model": f"{objective} ({tag})",
                "": _cell(seeded.get((tag, POISONED)), point),
            }
        for sweep_dir in r.sweeps:
            sweep = load_sweep(sweep_dir)
            defense, tag = sweep.defense, sweep.poisoned_run.name
            defenses += [defense] if defense not in defenses else []
            chosen, note = selected_or_lowest(sweep.points, asr_threshold)
            cell = _cell(seeded.get((tag, defense)) if not note else None, chosen and (chosen.ca, chosen.asr), note)
            rows_by_key.setdefault((r.attack, tag), {})[defense] = cell
    rows = [
        [attack, cells["model"], cells[""], *(cells.get(d, "-") for d in defenses)]
        for (attack, _), cells in rows_by_key.items()
    ]
    return Table(["attack", "pre-training", "poisoned: CA / ASR %", *(f"{d}: CA / ASR %" for d in defenses)], rows)


def attack_detection_table(results: list[AttackResults]) -> Table | None:
    """Per attack and scored model: each detector's AUROC on that attack's poisoned data (None without a
    detection stage)."""
    entries = [
        (r.attack, e) for r in results if r.filtering is not None and r.filtering.is_file()
        for e in json.loads(r.filtering.read_text())
    ]  # fmt: skip
    if not entries:
        return None
    columns = list(dict.fromkeys(c for _, e in entries for c in e["detection"]))
    rows = [
        [attack, f"{e['objective']} ({e['tag']})", e["reference"]["protocol"],
         *(f"{e['detection'][c]['auroc']:.3f}" if c in e["detection"] else "-" for c in columns)]
        for attack, e in entries
    ]  # fmt: skip
    return Table(["attack", "scored with", "protocol", *columns], rows)


def patch_table(results: list[AttackResults]) -> Table | None:
    """The optimised triggers' own diagnostic: how far the patch moved the surrogate's patched images toward the
    target captions' and target images' centres (mean cosine) from no patch and from the patch it started as,
    and its loss terms in the first and last epoch (None when no attack optimised a trigger)."""
    rows = []
    for r in results:
        if r.patch_record is None or not r.patch_record.is_file():
            continue
        record = json.loads(r.patch_record.read_text())
        sim, first, last = record["target_similarity"], record["history"][0], record["history"][-1]
        settings = record["settings"]
        triplet = "triplet" in last  # margin and weight mean something only where the loss has the triplet term
        loss = settings["loss"]
        if triplet:
            loss += f" (margin {settings['margin']:g}, weight {settings['weight']:g})"
        rows.append([
            r.attack, f"{loss}, {len(record['history'])} epochs, {record['pairs']:,} pairs, {record['side']} px",
            *(" / ".join(f"{sim[k][to]:.3f}" for k in ("clean", "initial", "optimised"))
              for to in ("to_captions", "to_images")),
            ", ".join(f"{k} {first[k]:.3f} -> {last[k]:.3f}" for k in last),
        ])  # fmt: skip
    if not rows:
        return None
    header = ["attack", "optimisation", "cos to target captions: clean / start / optimised",
              "cos to target images: clean / start / optimised", "loss terms, first -> last epoch"]  # fmt: skip
    return Table(header, rows)


def build_attack_report(
    out_dir: Path, results: list[AttackResults], asr_threshold: float, title: str, command: str | None = None
) -> Path:
    """``report.md`` and ``report.html`` in ``out_dir`` with the attack tables; returns report.md."""
    tables = [
        (f"Attack x pre-training x defense: CA / ASR % (selected: highest CA at ASR <= {asr_threshold:g} %)",
         attack_table(results, asr_threshold)),
        ("Per-sample detection AUROC per attack", attack_detection_table(results)),
        ("Optimised triggers: the patch's effect on the surrogate", patch_table(results)),
    ]  # fmt: skip
    return write_report(out_dir, title, command, [(h, t) for h, t in tables if t is not None], {})
