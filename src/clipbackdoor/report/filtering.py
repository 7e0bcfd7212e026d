"""The detection tables of a study report: AUROC per detector × pre-training objective, and what "detect,
filter, pre-train again" reached beside the poisoned model.

Their input, ``<study>/filter/filter.json``, is written by the study (:mod:`clipbackdoor.study.filtering`).
"""

from __future__ import annotations

import json
from pathlib import Path

from clipbackdoor.report.tables import Table


def protocol(reference: dict | None) -> str:
    """A row's protocol, its reference and k, and the poisons expected in the reference (a filter.json written
    before protocols were recorded says "-")."""
    if not reference:
        return "-"
    expected = f", {reference['expected_poisons']:.0f} poisons expected" if "expected_poisons" in reference else ""
    over = " (> k)" if "warning" in reference else ""
    k = f"k {reference['k']}, LID {reference['lid_k']}"
    return f"{reference['protocol']}: {reference['pairs']:,} pairs{expected}{over}; {k}"


def detection_table(index: Path) -> Table:
    """AUROC (and, after a slash, the recall at the poison rate) of every score column, per objective, with the
    protocol that scored it."""
    entries = json.loads(index.read_text())
    columns = list(dict.fromkeys(c for e in entries for c in e["detection"]))
    rows = [
        [e["objective"], protocol(e.get("reference")),
         *(f"{e['detection'][c]['auroc']:.3f} / {e['detection'][c]['recall_at_poison_rate']:.2f}"
           if c in e["detection"] else "-" for c in columns)]
        for e in entries
    ]  # fmt: skip
    return Table(["pre-training", "protocol (reference; k)", *columns], rows)


def filter_table(index: Path) -> Table | None:
    """Per objective: the poisoned model, what the filter dropped, the model pre-trained again, and the cost
    (None when the stage did not pre-train again: ``filter.retrain: false``)."""
    rows = []
    for e in json.loads(index.read_text()):
        filtered, poisoned = e["filtered"], e["poisoned"]
        if filtered is None:  # filter.retrain: false, detection only
            continue
        seconds = e["detect_seconds"]["embed"] + e["detect_seconds"]["score"]
        rows.append([
            e["objective"], f"{poisoned['ca']:.2f} / {poisoned['asr']:.2f}", e["by"],
            f"{e['dropped']:,} ({e['drop_percent']:g} %)", f"{e['poisons_dropped']:,} of {e['poisons']:,}",
            f"{filtered['ca']:.2f} / {filtered['asr']:.2f}",
            f"detection {seconds:.0f} s on {e['scored']:,} pairs; pre-training {filtered['epochs']} epochs "
            f"on {filtered['pairs']:,} pairs",
        ])  # fmt: skip
    header = ["pre-training", "poisoned CA / ASR %", "dropped by", "pairs dropped", "poisons dropped",
              "filtered, pre-trained again: CA / ASR %", "compute"]  # fmt: skip
    return Table(header, rows) if rows else None
