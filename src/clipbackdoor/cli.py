"""The ``clipbackdoor`` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clipbackdoor.config import ConfigError, load_config

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


# The demo pre-trains one model per objective on the same poisoned data (the study's two pre-trainings),
# then cleans each with CleanCLIP's recipe, shortened to fit a laptop-sized run.
DEMO_OBJECTIVES = {"mmcl": "{mmcl: 1.0}", "mmcl-ssl": "{mmcl: 1.0, ssl: 1.0}"}
DEMO_CLEANING = ["train.epochs=2", "train.lr=1e-3"]  # lr 1e-4 left ASR at 86 % (MMCL), 45 % (MMCL+SSL)


def cmd_demo(args: argparse.Namespace) -> int:
    from clipbackdoor.defenses.cleaning import cleaning_config
    from clipbackdoor.report.plots import plot_epoch_curves
    from clipbackdoor.train.loop import fit

    base = load_config("demo", args.overrides)
    if base.poison is not None:
        from clipbackdoor.attacks.poison import write_poisoned_dataset

        write_poisoned_dataset(base.poison, progress=base.train.progress)
    series, summary = [], []
    for tag, objective in DEMO_OBJECTIVES.items():
        cfg = load_config("demo", [*args.overrides, f"name={base.name}-{tag}", f"objective={objective}"])
        print(f"== pre-training {cfg.name}: objective {objective}")
        records = fit(cfg)
        print(_records_table(records))
        series += [(f"{tag}: clean accuracy", records, "eval/clean_top1"), (f"{tag}: ASR", records, "eval/asr_top1")]
        if cfg.eval.attack is None:
            continue
        cleaning = cleaning_config(cfg.run_dir, "cleanclip", [*DEMO_CLEANING, f"train.progress={cfg.train.progress}"])
        print(f"== cleaning {cfg.name} with CleanCLIP -> {cleaning.run_dir}")
        cleaned = fit(cleaning)
        print(_records_table(cleaned))
        summary.append((tag, records[-1], cleaned[-1]))
    figure = plot_epoch_curves(
        series,
        Path(base.output_dir) / f"{base.name}-report" / "pretraining.png",
        f"{base.model.name} pre-trained on poisoned Fashion-MNIST",
    )
    print(f"\n{'pre-training':<14}{'poisoned CA %':>15}{'ASR %':>9}{'CleanCLIP CA %':>16}{'ASR %':>9}")
    for tag, poisoned, cleaned in summary:
        print(
            f"{tag:<14}{poisoned['eval/clean_top1']:>15.2f}{poisoned['eval/asr_top1']:>9.2f}"
            f"{cleaned['eval/clean_top1']:>16.2f}{cleaned['eval/asr_top1']:>9.2f}"
        )
    print(f"figure: {figure}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from clipbackdoor.defenses.cleaning import cleaning_config
    from clipbackdoor.train.loop import fit

    cfg = cleaning_config(args.run, args.defense, args.overrides, args.name)
    print(f"== cleaning {args.run} with {cfg.defense['name']} -> {cfg.run_dir}")
    records = fit(cfg)
    print(_records_table(records))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from clipbackdoor.data import BadRowLog
    from clipbackdoor.evaluation import build_evaluator
    from clipbackdoor.models import create_model
    from clipbackdoor.train import checkpoint as ckpt
    from clipbackdoor.train.distributed import resolve_device

    weights = Path(args.checkpoint)
    if weights.is_dir():
        weights = ckpt.latest_checkpoint(weights)["weights"]
    config = args.config
    if config is None:  # the run's own config, when the checkpoint sits in a run directory
        candidate = weights.parent.parent / "config.yaml"
        config = candidate if candidate.is_file() else "demo"
    cfg = load_config(config, [*args.overrides, f"model.checkpoint={weights}"])
    meta = ckpt.checkpoint_metadata(weights)
    if "image_size" in meta and cfg.model.image_size is None:
        cfg.model.image_size = int(meta["image_size"])
    bundle = create_model(cfg.model)
    device = resolve_device(cfg.train.device)
    bundle.model.to(device)
    bad_rows = BadRowLog(cfg.data.max_bad_rows)
    result = build_evaluator(cfg, bundle.image_size, bad_rows)(bundle, device)
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
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the embedded default: poison Fashion-MNIST, pre-train a tiny CLIP, CA and ASR")
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
    from clipbackdoor.attacks.manifest import ManifestError
    from clipbackdoor.augment.wordnet import WordNetMissing
    from clipbackdoor.data import DataError
    from clipbackdoor.train.loop import TrainingError

    try:
        return args.func(args)
    except (ConfigError, DataError, ManifestError, TrainingError, WordNetMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
