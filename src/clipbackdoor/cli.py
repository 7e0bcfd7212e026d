"""The ``clipbackdoor`` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clipbackdoor.config import ConfigError, load_config


def _records_table(records: list[dict]) -> str:
    lines = [f"{'epoch':>5}  {'top-1 %':>8}  {'top-5 %':>8}  {'train loss':>10}"]
    for r in records:
        loss = f"{r['train/loss']:.4f}" if "train/loss" in r else "-"
        lines.append(
            f"{r['epoch']:>5}  {r.get('eval/clean_top1', float('nan')):8.2f}  "
            f"{r.get('eval/clean_top5', float('nan')):8.2f}  {loss:>10}"
        )
    return "\n".join(lines)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from clipbackdoor.train.loop import fit

    cfg = load_config(args.config, args.overrides)
    records = fit(cfg)
    print(_records_table(records))
    print(f"run directory: {cfg.run_dir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from clipbackdoor.report.plots import plot_epoch_curves
    from clipbackdoor.train.loop import fit

    cfg = load_config("demo", args.overrides)
    records = fit(cfg)
    print(_records_table(records))
    figure = plot_epoch_curves(
        records,
        {"eval/clean_top1": "zero-shot top-1", "eval/clean_top5": "top-5"},
        cfg.run_dir / "report" / "accuracy.png",
        f"{cfg.model.name} on Fashion-MNIST ({'+'.join(cfg.objective)})",
    )
    print(f"final zero-shot top-1: {records[-1]['eval/clean_top1']:.2f}%  (figure: {figure})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from clipbackdoor.data import BadRowLog, build_labelled_dataset
    from clipbackdoor.evaluation import ZeroShotEvaluator
    from clipbackdoor.models import create_model
    from clipbackdoor.train import checkpoint as ckpt
    from clipbackdoor.train.loop import resolve_device

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
    eval_set = build_labelled_dataset(cfg.data.eval, bundle.image_size)
    bad_rows = BadRowLog(cfg.data.max_bad_rows)
    bad_rows.add(eval_set.rows.bad)
    result = ZeroShotEvaluator(eval_set, cfg.eval.batch_size, cfg.data.num_workers, bad_rows)(bundle, device)
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

    p = sub.add_parser("evaluate", help="zero-shot accuracy of a checkpoint, written as a JSON record")
    p.add_argument("checkpoint", help="a .safetensors file, a checkpoints/ folder or a run directory")
    p.add_argument("--config", help="config whose data.eval set to use (default: the run's own config)")
    p.add_argument("--out", help="JSON file to write (default: next to the checkpoint)")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the embedded default: tiny CLIP on Fashion-MNIST, a few minutes on CPU")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
