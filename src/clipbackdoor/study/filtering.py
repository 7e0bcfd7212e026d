"""The study's "detect, filter, retrain" stage: a defense before cleaning, for each pre-training objective.

After a poisoned model is pre-trained, it scores every training pair with the detectors of ``filter``
(:mod:`clipbackdoor.detect`, one AUROC per detector against the manifest: does detection, too, depend on
the objective?). The top ``drop_percent`` % of pairs by ``filter.by`` are dropped from ``train.csv``, and the
same objective is pre-trained again, from scratch, on what is left (``pretrain/<tag>-filtered``). The
shipped cleaning sets hold no poisons, so filtering them would do nothing: this stage filters the
pre-training data instead. ``filter/filter.json`` records, per objective, the detection metrics, what was
dropped (and how many of the drops were poisons), the retrained model's CA/ASR and the compute spent.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from clipbackdoor.attacks.manifest import load_manifest
from clipbackdoor.detect import DetectSpec, detect
from clipbackdoor.report.build import objective_label
from clipbackdoor.resolve import load_checkpoint_model, load_config
from clipbackdoor.study.config import FilterSpec, StudyConfig, pretrain_overrides
from clipbackdoor.study.pretraining import last_epoch, run_pretraining


def write_filtered(train_csv: Path, scores: Path, by: str, drop_percent: float, out: Path) -> dict[str, Any]:
    """``train_csv`` without its top ``drop_percent`` % rows by ``scores[by]`` (ties broken by row number),
    written to ``out`` beside it, so image paths stay relative to the same folder. Rows without a score
    (unreadable images) are dropped too. Returns the dropped rows' numbers."""
    import pyarrow.parquet as pq

    table = pq.read_table(scores, columns=["id", by]).to_pydict()
    ids, values = np.asarray(table["id"], dtype=np.int64), np.asarray(table[by], dtype=np.float64)
    drop_count = round(len(ids) * drop_percent / 100)
    order = np.lexsort((ids, -values))  # highest score first; equal scores by row number: deterministic
    dropped = set(ids[order[:drop_count]].tolist())
    kept_ids = set(ids.tolist()) - dropped
    with train_csv.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [row for ordinal, row in enumerate(reader) if ordinal in kept_ids]
    tmp = out.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(out)
    return {"dropped": sorted(dropped), "kept": len(rows), "scored": len(ids)}


def run_filtering(cfg: StudyConfig, log: Any = print) -> Path:
    """Detect, filter and pre-train again for every objective of study ``cfg``, resuming what is done;
    returns ``<study>/filter/filter.json``."""
    spec: FilterSpec = cfg.filter
    data = cfg.study_dir / "data"
    manifest, _ = load_manifest(data)
    poisons = set(manifest.poison_rows)
    entries = []
    for tag in spec.pretrain or list(cfg.pretrain):
        run_dir = cfg.study_dir / "pretrain" / tag
        out = cfg.study_dir / "filter" / tag
        if (out / "metrics.json").is_file():
            log(f"== detection {tag}: scored earlier, read back from {out}")
            record = json.loads((out / "metrics.json").read_text())
        else:
            log(f"== detection {tag}: {', '.join(spec.detectors)} on {data / 'train.csv'} -> {out}")
            _, bundle, device, _, _ = load_checkpoint_model(run_dir)
            detect_spec = DetectSpec(
                data, tuple(spec.detectors), spec.k, spec.reference_size, spec.text, lid_k=spec.lid_k
            )
            record = detect(bundle, detect_spec, out, device)
        filtered_csv = data / f"train-filtered-{tag}.csv"
        kept = write_filtered(data / "train.csv", out / "scores.parquet", spec.by, spec.drop_percent, filtered_csv)
        dropped_poisons = len(poisons & set(kept["dropped"]))
        log(f"   dropped {len(kept['dropped']):,} pairs by {spec.by} ({dropped_poisons} of {len(poisons)} poisons)")
        retrain = load_config(cfg.base, pretrain_overrides(cfg, tag, filtered=filtered_csv))
        filtered = None
        if spec.retrain:
            last = run_pretraining(cfg, tag, log, filtered=filtered_csv)
            filtered = {
                "ca": last["eval/clean_top1"], "asr": last["eval/asr_top1"], "epoch": last["epoch"],
                "run_dir": str(retrain.run_dir), "pairs": kept["kept"], "epochs": retrain.train.epochs,
            }  # fmt: skip
        poisoned = last_epoch(run_dir)
        entries.append({
            "tag": tag, "objective": objective_label(retrain.objective), "by": spec.by,
            "drop_percent": spec.drop_percent, "scored": kept["scored"], "dropped": len(kept["dropped"]),
            "poisons": len(poisons), "poisons_dropped": dropped_poisons,
            "detection": record["detection"]["detectors"], "detect_seconds": record["seconds"],
            "reference": record["reference"],
            "poisoned": {"ca": poisoned["eval/clean_top1"], "asr": poisoned["eval/asr_top1"]},
            "filtered": filtered,
        })  # fmt: skip
    index = cfg.study_dir / "filter" / "filter.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps(entries, indent=1) + "\n")
    return index
