"""The ``clipbackdoor`` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from clipbackdoor.config import ConfigError
from clipbackdoor.resolve import load_config

COLUMNS = {
    "eval/clean_top1": "CA top-1 %",
    "eval/clean_top5": "CA top-5 %",
    "eval/asr_top1": "ASR top-1 %",
    "eval/ra_top1": "RA top-1 %",
    "train/loss": "train loss",
}


def _records_table(records: list[dict]) -> str:
    """Per-epoch table of whichever metrics the records hold."""
    keys = [k for k in COLUMNS if any(k in r for r in records)]
    lines = ["epoch" + "".join(f"{COLUMNS[k]:>13}" for k in keys)]
    for r in records:
        cells = "".join(f"{r[k]:13.2f}" if k in r else f"{'-':>13}" for k in keys)
        lines.append(f"{r['epoch']:>5}{cells}")
    return "\n".join(lines)


def cmd_poison(args: argparse.Namespace) -> int:
    from clipbackdoor.attacks.poison import write_poisoned_dataset

    cfg = load_config(args.config, args.overrides)
    if cfg.poison is None:
        raise ConfigError(f"{args.config}: no 'poison' section")
    manifest = write_poisoned_dataset(cfg.poison)
    print(
        f"{cfg.poison.output}: {manifest.num_rows} pairs, {len(manifest.poison_rows)} poisoned "
        f"({manifest.mode}, trigger {manifest.trigger['name']}, target {manifest.target!r})"
        + (f", cleaning set of {manifest.cleaning['size']}" if manifest.cleaning else "")
    )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from clipbackdoor.train.loop import fit

    cfg = load_config(args.config, args.overrides)
    records = fit(cfg)
    print(_records_table(records))
    print(f"run directory: {cfg.run_dir}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, for reports to say what made them."""
    return shlex.join(["clipbackdoor", *args.argv])


def _print_best_table(report: Path) -> None:
    """The best-cleaned table of a report, as the report shows it (none in a report without sweeps)."""
    text = report.read_text()
    if "## Best cleaned" not in text:
        return
    start = text.index("## Best cleaned")
    print(text[start : text.index("\n## ", start + 1)].strip())


def cmd_study(args: argparse.Namespace) -> int:
    from clipbackdoor.study.config import load_study_config
    from clipbackdoor.study.run import run_study

    cfg = load_study_config(args.config, args.overrides)
    report = run_study(cfg, command=_command_line(args), only=args.only.split(",") if args.only else None)
    _print_best_table(report)
    print(f"report: {report} and {report.with_suffix('.html')}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from clipbackdoor.study.config import load_study_config, read_study_tree
    from clipbackdoor.study.measurements import measurement_dirs
    from clipbackdoor.study.plan import format_plan, is_study, plan_experiment, plan_study

    dirs = measurement_dirs(args.measured)
    if is_study(read_study_tree(args.config)):
        stages = plan_study(load_study_config(args.config, args.overrides), args.gpus, dirs, cores=args.cores)
    else:
        stages = plan_experiment(load_config(args.config, args.overrides), args.gpus or 1, dirs, cores=args.cores)
    print(format_plan(stages))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """A study's progress read from its directory and storage: works from any shell or machine that sees them."""
    from clipbackdoor.study.config import load_study_dir
    from clipbackdoor.study.plan import plan_study
    from clipbackdoor.study.progress import format_progress, study_progress

    cfg = load_study_dir(args.study_dir)
    record = study_progress(cfg, plan_study(cfg))
    print(json.dumps(record, indent=1) if args.json else format_progress(record))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The reduced study (configs/study-demo.yaml): every stage, sized for a laptop CPU."""
    args.config, args.only = "study-demo", None
    return cmd_study(args)


def _device_overrides(args: argparse.Namespace) -> list[str]:
    """``--devices 0,1,2,3`` and ``--devices-per-trial N`` as config overrides (they win over key=value ones)."""
    overrides = []
    if args.devices is not None:
        overrides.append(f"devices={json.dumps(args.devices.split(',') if args.devices.strip() else [])}")
    if args.devices_per_trial is not None:
        overrides.append(f"devices_per_trial={args.devices_per_trial}")
    return overrides


def cmd_sweep(args: argparse.Namespace) -> int:
    from clipbackdoor.sweep import best_under, load_sweep_config, pareto_front, run_sweep, sweep_points

    cfg = load_sweep_config(args.config, [*args.overrides, *_device_overrides(args)])
    study = run_sweep(cfg, threads=args.workers, worker_index=args.worker_index)
    points, poisoned = sweep_points(study)
    if poisoned is not None:
        print(f"poisoned model: CA {poisoned.ca:.2f} %, ASR {poisoned.asr:.2f} %")
    best = best_under(points, cfg.asr_threshold)
    print(f"{len(points)} cleaned (trial, epoch) points; best with ASR <= {cfg.asr_threshold:g} %: " + (
        "none" if best is None else f"CA {best.ca:.2f} %, ASR {best.asr:.2f} % (trial {best.trial}, "
        f"epoch {best.epoch}, {best.params})"
    ))  # fmt: skip
    for p in pareto_front(points):
        print(f"  Pareto: CA {p.ca:6.2f}  ASR {p.asr:6.2f}  trial {p.trial} epoch {p.epoch}  {p.params}")
    print(f"sweep directory: {cfg.sweep_dir}")
    return 0


def _study_sweeps(study_dir: Path) -> list[Path]:
    """A study's sweep directories in its config's order (the table's columns), then any others found."""
    from clipbackdoor.study.config import load_study_config, sweep_configs

    found = sorted(p.parent for p in (study_dir / "sweeps").glob("*/sweep.yaml"))
    planned = [study_dir / "sweeps" / s.name for s in sweep_configs(load_study_config(study_dir / "study.yaml"))]
    return [d for d in planned if d in found] + [d for d in found if d not in planned]


def _study_pretrainings(study_dir: Path) -> list[Path]:
    """A study's pre-training runs that finished at least one evaluation, in its config's order."""
    from clipbackdoor.study.config import load_study_config

    tags = load_study_config(study_dir / "study.yaml").pretrain
    return [study_dir / "pretrain" / tag for tag in tags if (study_dir / "pretrain" / tag / "metrics.jsonl").is_file()]


def _attack_report(study_dir: Path, args: argparse.Namespace) -> int:
    """The report of a study with an attack axis, from its attacks' runs (each attack's own report is
    ``clipbackdoor report <study>/attacks/<attack>``)."""
    from clipbackdoor.report.attacks import build_attack_report
    from clipbackdoor.study.attack_axis import attack_studies
    from clipbackdoor.study.config import load_study_dir
    from clipbackdoor.study.run import attack_results

    cfg = load_study_dir(study_dir)
    results = [attack_results(attack, study) for attack, study in attack_studies(cfg).items()]
    out = Path(args.out) if args.out else study_dir / "report"
    report = build_attack_report(out, results, args.asr_threshold, args.title, _command_line(args))
    print(f"report: {report} and {report.with_suffix('.html')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from clipbackdoor.report.build import build_report
    from clipbackdoor.study.config import load_study_dir

    only = Path(args.paths[0])
    if len(args.paths) == 1 and (only / "study.yaml").is_file() and load_study_dir(only).attacks:
        return _attack_report(only, args)
    sweep_dirs, default_out, seeds, filtering, pretrained = [], None, None, None, []
    for given in map(Path, args.paths):
        if (given / "study.yaml").is_file():
            sweep_dirs += _study_sweeps(given)
            pretrained += _study_pretrainings(given)
            default_out = default_out or given / "report"
            if (given / "seeds" / "seeds.json").is_file():
                seeds = given / "seeds" / "seeds.json"
            if (given / "filter" / "filter.json").is_file():
                filtering = given / "filter" / "filter.json"
        elif (given / "sweep.yaml").is_file():
            sweep_dirs.append(given)
            default_out = default_out or given / "report"
        else:
            raise ConfigError(f"{given}: neither a study directory (study.yaml) nor a sweep directory (sweep.yaml)")
    out = Path(args.out) if args.out else default_out
    report = build_report(
        sweep_dirs,
        out,
        args.title,
        args.asr_threshold,
        args.format,
        _command_line(args),
        seeds=seeds,
        filtering=filtering,
        pretrained=pretrained,
    )
    _print_best_table(report)
    print(f"report: {report} and {report.with_suffix('.html')}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from clipbackdoor.cleaning import cleaning_config
    from clipbackdoor.train.loop import fit

    cfg = cleaning_config(args.run, args.defense, args.overrides, args.name)
    print(f"== cleaning {args.run} with {cfg.defense['name']} -> {cfg.run_dir}")
    records = fit(cfg)
    print(_records_table(records))
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from clipbackdoor.detect import DetectSpec, detect
    from clipbackdoor.resolve import load_checkpoint_model

    _, bundle, device, weights, _ = load_checkpoint_model(args.checkpoint, None, [])
    spec = DetectSpec(
        Path(args.data), tuple(args.detectors.split(",")), args.k, args.reference_size, args.text, args.seed,
        args.batch_size, args.workers, args.chunk_rows, args.ivf_lists, args.nprobe, args.lid_k, args.protocol,
        args.batch_reference, Path(args.reference) if args.reference else None, args.poison_rate,
    )  # fmt: skip
    out = Path(args.out) if args.out else weights.parent.parent / "detect" / Path(args.data).resolve().name
    record = detect(bundle, spec, out, device)
    print(f"scores of {record['pairs']:,} pairs -> {out / 'scores.parquet'}")
    ref = record["reference"]
    expected = f", {ref['expected_poisons']:.1f} poisons expected in it" if "expected_poisons" in ref else ""
    print(f"protocol {ref['protocol']}: reference {ref['pairs']:,} pairs{expected}; k={ref['k']}, LID {ref['lid_k']}")
    if "warning" in ref:
        print(f"WARNING {ref['warning']}")
    for name, m in record.get("detection", {}).get("detectors", {}).items():
        print(f"  {name:26s} AUROC {m['auroc']:.3f}  AUPRC {m['auprc']:.3f}  "
              f"recall at the poison rate {m['recall_at_poison_rate']:.3f}")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from clipbackdoor.data import BadRowLog
    from clipbackdoor.evaluation import build_evaluator
    from clipbackdoor.resolve import load_checkpoint_model

    cfg, bundle, device, weights, meta = load_checkpoint_model(args.checkpoint, args.config, args.overrides)
    bad_rows = BadRowLog(cfg.data.max_bad_rows)
    result = build_evaluator(cfg, bundle.image_size, bad_rows, bundle.tokenizer)(bundle, device)
    if args.format == "clip_benchmark":
        from clipbackdoor.evaluation.benchmark_record import clip_benchmark_record

        record = clip_benchmark_record(result, cfg.data.eval, bundle.name, weights)
    else:
        record = {
            "checkpoint": str(weights),
            "epoch": int(meta.get("epoch", -1)),
            "model": bundle.name,
            "eval_set": cfg.data.eval.model_dump(mode="json"),
            **{f"eval/{k}": v for k, v in result.items()},
            "data/bad_rows": bad_rows.count,
        }
    out = Path(args.out) if args.out else weights.with_suffix(".eval.json")
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    print(f"written to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from clipbackdoor import checkpoints as ckpt
    from clipbackdoor.interop import export_open_clip, read_state_dict

    if args.hf:
        return _export_hf(args)
    weights = ckpt.resolve_weights(args.checkpoint)
    meta = ckpt.checkpoint_metadata(weights)
    name = args.model or meta.get("model_name")
    if name is None:
        raise ConfigError(f"{weights}: no model name recorded in it; give --model")
    out = export_open_clip(read_state_dict(weights), Path(args.out), name, int(meta.get("epoch", 0)))
    print(f"{out}: open_clip checkpoint of {name} (open_clip.create_model({name!r}) + open_clip.load_checkpoint)")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from clipbackdoor.hub import export_hf, provenance
    from clipbackdoor.resolve import load_checkpoint_model

    overrides = ["train.device=cpu", *([f"model.name={args.model}"] if args.model else [])]
    _, bundle, _, weights, meta = load_checkpoint_model(args.checkpoint, overrides=overrides)
    prov = provenance(weights, bundle.name, int(meta.get("epoch", 0)))
    out = export_hf(bundle.model, bundle.name, bundle.image_size, Path(args.out), prov)
    print(f"{out}: open_clip Hub directory of {bundle.name} (open_clip.create_model_and_transforms('local-dir:{out}'))")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import os

    from clipbackdoor.synth import synthesize

    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    m = synthesize(
        args.out,
        pairs=args.pairs,
        eval_images=args.eval_images,
        classes=args.classes,
        target=args.target,
        target_share=args.target_share,
        corrupt=args.corrupt,
        shard_size=args.shard_size,
        seed=args.seed,
        min_side=args.min_side,
        max_side=args.max_side,
        overwrite=args.force,
        workers=workers,
    )
    kinds = ", ".join(f"{c['kind']} (line {c['csv_line']})" for c in m.corrupt) or "none"
    print(
        f"{m.out}: {m.pairs} pairs ({m.target_named} captions name {m.target!r}), {len(m.shards)} shard(s), "
        f"{m.eval_images} eval images of {len(m.classes)} classes, in {m.seconds:.1f} s\n"
        f"classes: {', '.join(f'{n} ({i})' for n, i in zip(m.classes, m.class_indices, strict=True))}\n"
        f"corrupt rows: {kinds}\n"
        f"use:\n  data.train='{m.config()['csv']}'\n  data.train=\"{m.config()['webdataset']}\"\n"
        f"  data.eval='{m.config()['eval']}'\n"
        f"  poison.target.name={m.target!r}"
        + (f" poison.target.aliases='{json.dumps(m.target_aliases)}'" if m.target_aliases else "")
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipbackdoor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    overrides = {"nargs": "*", "default": [], "help": "config overrides, e.g. train.lr=1e-4 train.epochs=2"}

    p = sub.add_parser("pretrain", help="pre-train a CLIP model from a config (resumes if interrupted)")
    p.add_argument("config", help="YAML file or built-in config name (e.g. demo)")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("poison", help="write a poisoned dataset (CSV + PNG + manifest) from a config's poison section")
    p.add_argument("config", help="YAML file or built-in config name")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_poison)

    p = sub.add_parser("clean", help="clean a poisoned run with a defense; CA/ASR/RA at epoch 0 and every epoch")
    p.add_argument("run", help="the poisoned run directory (its last checkpoint is cleaned)")
    p.add_argument("--defense", default="cleanclip", help="built-in defense (configs/defenses/) or a YAML recipe")
    p.add_argument("--name", help="run name (default: <poisoned run>-<defense>)")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("evaluate", help="zero-shot accuracy of a checkpoint, written as a JSON record")
    p.add_argument("checkpoint", help="a .safetensors file, a checkpoints/ folder or a run directory")
    p.add_argument("--config", help="config whose data.eval set to use (default: the run's own config)")
    p.add_argument("--out", help="JSON file to write (default: next to the checkpoint)")
    p.add_argument("--format", choices=["clipbackdoor", "clip_benchmark"], default="clipbackdoor",
                   help="clip_benchmark: CLIP_benchmark's result schema, CA/ASR/RA added to its metrics")  # fmt: skip
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("detect", help="score every training pair as a likely poison (kdist, LID, SLOF, DAO, ...)")
    p.add_argument("checkpoint", help="the model whose embeddings are scored: a run directory or checkpoint")
    p.add_argument("--data", required=True, help="a CSV of pairs, or a folder written by poison (with its manifest)")
    p.add_argument("--detectors", default="kdist,lid,slof,dao,isolation_forest,cosine", help="comma-separated")
    p.add_argument("-k", type=int, default=16, help="neighbours of k-distance, SLOF, DAO (16: the paper's script)")
    p.add_argument("--lid-k", type=int, default=64, help="neighbours of LID (64: the paper's script)")
    p.add_argument(
        "--protocol", choices=["ours", "paper"], default="ours",
        help="ours: a sample of --reference-size pairs, per modality, normalised; paper: each image against the "
        "images and captions of its batch of --batch-reference pairs, raw embeddings (Huang et al. 2025)",
    )  # fmt: skip
    p.add_argument("--reference-size", type=int, default=10_000, help="ours: pairs drawn as the neighbourhood set")
    p.add_argument("--batch-reference", type=int, default=2048, help="paper: pairs per batch")
    p.add_argument("--reference", help="a CSV of pairs assumed clean (e.g. poison's cleaning.csv) as the reference")
    p.add_argument("--poison-rate", type=float, help="for the poisons expected in the reference (default: manifest's)")
    p.add_argument("--text", action="store_true", help="ours: also score the caption embeddings")
    p.add_argument("--seed", type=int, default=0, help="draws the reference set")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the embedding pass")
    p.add_argument("--chunk-rows", type=int, default=50_000, help="rows embedded per resumable chunk")
    p.add_argument("--ivf-lists", type=int, help="search an IVF index with this many cells (default: exact)")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query")
    p.add_argument("--out", help="folder for scores.parquet and metrics.json (default: RUN/detect/<data>)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("export", help="write a checkpoint in open_clip's format (.pt, .safetensors, or --hf folder)")
    p.add_argument("checkpoint", help="a .safetensors file, a checkpoints/ folder or a run directory")
    p.add_argument("out", help="output file: .pt (open_clip's {epoch, name, state_dict}) or .safetensors")
    p.add_argument("--model", help="model name, if the checkpoint does not record it")
    p.add_argument("--hf", action="store_true", help="OUT is a folder: the Hugging Face Hub layout open_clip's "
                   "'local-dir:' and 'hf-hub:' read, with a model card (nothing is uploaded)")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sweep", help="Optuna sweep of a defense's hyperparameters (resumes; several may join)")
    p.add_argument("config", help="sweep YAML: run, defense, sampler, space, trials")
    p.add_argument("--workers", type=int, default=1, help="trials run at once by this process, one per device slot")
    p.add_argument("--worker-index", type=int, default=0, help="distinct per process joining one sweep (seeds)")
    p.add_argument(
        "--devices",
        help="GPUs this process's trials may use, e.g. 0,1,2,3 (default: every visible one; '' for none); "
        "several processes on one machine need disjoint --devices",
    )
    p.add_argument("--devices-per-trial", type=int, help="GPUs in each worker's slot (default 1)")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="tables, Pareto sets and figures (Markdown + HTML) from studies or sweeps")
    p.add_argument("paths", nargs="+", help="study directories and/or sweep directories")
    p.add_argument("--out", help="report folder (default: <study>/report or <sweep>/report)")
    p.add_argument("--title", default="clipbackdoor report")
    p.add_argument("--asr-threshold", type=float, default=5.0, help="selection rule: best CA with ASR <= this %%")
    p.add_argument("--format", choices=["png", "svg"], default="png", help="figure format")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("study", help="poison -> pre-train -> sweep every defense -> report, resumably")
    p.add_argument("config", help="study YAML (e.g. configs/study-fmnist.yaml) or a built-in name")
    p.add_argument("overrides", **overrides)
    p.add_argument(
        "--only", metavar="TAG,TAG", help="run only these pre-trainings (and their seeds), e.g. roclip,safeclip"
    )
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("status", help="a study's progress (stage, steps and runs done, elapsed, ETA), from any shell")
    p.add_argument("study_dir", help="the study's directory, e.g. runs/study-fmnist")
    p.add_argument("--json", action="store_true", help="print the record progress.json holds")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("plan", help="the compute plan of a config or study: batches, steps, warm-up, cost, warnings")
    p.add_argument("config", help="experiment or study YAML, or a built-in name")
    p.add_argument("overrides", **overrides)
    p.add_argument("--gpus", type=int, help="processes for training (a study's pre-training); default: its launcher")
    p.add_argument("--cores", type=int, help="CPU cores per node, for the data-path check; default: this machine's")
    p.add_argument(
        "--measured",
        type=Path,
        help="folder of benchmark JSONs (your GPU's), looked up first; or $CLIPBACKDOOR_MEASURED",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("synth", help="write synthetic web-like data: CSV + JPEGs, WebDataset shards, ImageNet eval set")
    p.add_argument("out", help="folder to write (train.csv, images/, shards/, imagenet/, synth.json)")
    p.add_argument("--pairs", type=int, default=2000, help="training image–caption pairs (default 2000)")
    p.add_argument("--eval-images", type=int, default=200, help="labelled evaluation images (default 200)")
    p.add_argument("--classes", type=int, default=10, help="ImageNet classes drawn, the target among them (2-20)")
    p.add_argument("--target", default="banana", help="attack target: an ImageNet class name (default banana)")
    p.add_argument("--target-share", type=float, default=0.05, help="fraction of pairs showing the target")
    p.add_argument("--corrupt", type=int, default=8, help="corrupt samples: truncated, empty, non-image, no caption")
    p.add_argument("--shard-size", type=int, default=500, help="samples per WebDataset shard (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-side", type=int, default=120, help="smallest image side in pixels (default 120)")
    p.add_argument("--max-side", type=int, default=640, help="largest image side in pixels (default 640)")
    p.add_argument("--workers", type=int, help="processes drawing images (default: CPU count, at most 8)")
    p.add_argument("--force", action="store_true", help="replace what an earlier synth wrote in OUT")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="the embedded default: the reduced Fashion-MNIST study (about 15 minutes)")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value overrides may stand anywhere, also between options (argparse alone cannot mix them)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = build_parser().parse_args([a for a in argv if a not in overrides])
    if overrides and not hasattr(args, "overrides"):
        build_parser().error(f"{args.command} takes no key=value overrides")
    if overrides:
        args.overrides = overrides
    args.argv = argv
    from clipbackdoor.attacks.manifest import ManifestError
    from clipbackdoor.augment.wordnet import WordNetMissing
    from clipbackdoor.data import DataError
    from clipbackdoor.interop import CheckpointError
    from clipbackdoor.train.loop import TrainingError

    try:
        return args.func(args)
    except (CheckpointError, ConfigError, DataError, ManifestError, TrainingError, WordNetMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
