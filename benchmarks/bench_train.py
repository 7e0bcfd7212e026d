"""Pre-training throughput: our training loop against a plain open_clip loop, and MMCL+SSL against MMCL.

- ``loop_vs_open_clip``: both loops read the same DataLoader (same dataset, batch size and order) and run
  the same model, CLIP loss and optimizer, so the ratio is the overhead our loop adds (metrics, checkpoints,
  schedule, guards); target ≥ 0.95.
- ``ssl_vs_mmcl``: our loop with MMCL+SSL (two views per pair: twice the forward/backward, plus AutoAugment
  and EDA in the loader) against MMCL at the same batch; 0.5 is the ideal, target ≥ 0.45.
- ``matmul_peak_share``: each objective's model FLOP/s as a share of the measured fp32 matmul peak.

- ``--scale``: RN50 at 224 px (or ``--model``), MMCL and MMCL+SSL, on synthetic tensors on the device and on
  generated web-like JPEG files through the loader (decoded by its workers, and with ``data.decode: gpu``);
  samples/s, files ÷ synthetic, and the share of the device's matmul peak (bf16 on a GPU).

    python benchmarks/bench_train.py            # writes benchmarks/results/train.json
    python benchmarks/bench_train.py --scale --batch 128 --steps 20   # GPU: train_scale.json
    python benchmarks/bench_train.py --scale --batch 4 --steps 4      # the same at CPU size
    python benchmarks/bench_train.py --scale --model tiny-rn --batch 64 --steps 8   # train_scale_tiny-rn.json
    python benchmarks/bench_train.py --loggers --batch 256 --steps 50 --repeats 5  # loggers.json (issue 19)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from open_clip.loss import ClipLoss
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).parent))
from bench_gpu import flops_per_sample, measure
from common import machine, matmul_peak_flops, write_result

from clipbackdoor.config import ExperimentConfig
from clipbackdoor.data import build_pair_dataset, collate_skipping_bad
from clipbackdoor.models import create_model
from clipbackdoor.resolve import load_config
from clipbackdoor.study.progress import PROGRESS_EVERY_S
from clipbackdoor.synth import synthesize
from clipbackdoor.train.loop import fit

OBJECTIVES = {"mmcl": "{mmcl: 1.0}", "mmcl+ssl": "{mmcl: 1.0, ssl: 1.0}"}


def ours(
    model: str, batch: int, steps: int, workdir: Path, tag: str, objective: str = "mmcl", extra: tuple[str, ...] = ()
) -> float:
    return fit(bench_config(model, batch, steps, workdir, tag, objective, extra))[-1]["time/samples_per_s"]


def bench_config(
    model: str, batch: int, steps: int, workdir: Path, tag: str, objective: str = "mmcl", extra: tuple[str, ...] = ()
) -> ExperimentConfig:
    return load_config(
        "demo",
        [
            f"objective={OBJECTIVES[objective]}",
            f"name=bench-{objective}-{tag}",
            f"output_dir={workdir}",
            f"model.name={model}",
            "train.epochs=1",
            f"train.batch_size={batch}",
            f"data.train={{source: fashion-mnist, max_samples: {batch * steps}}}",
            "data.eval.max_samples=100",
            "eval.attack=null",
            "eval.every_epoch=false",
            "train.progress=false",
            "train.warmup_steps=2",
            *extra,
        ],
    )


LOGGERS = {
    "off": (),
    "tensorboard": ("log.tensorboard=true",),
    "wandb": ("log.wandb={project: bench, mode: offline}",),
    "both": ("log.tensorboard=true", "log.wandb={project: bench, mode: offline}"),
}


def loggers(args: argparse.Namespace) -> None:
    """Training throughput with the external loggers on against off (issue target: at most 2 % lower).

    Wall-clock samples/s of the whole ``fit`` (2 epochs at the demo's batch and log_every, evaluation off), so
    what the loggers do outside the timed epochs counts too: W&B's start, its flushes at each checkpoint,
    its finish. The variants run interleaved, ``--repeats`` times each, so drift in machine load hits all."""
    import os

    import clipbackdoor.train.loop as loop

    os.environ.setdefault("WANDB_SILENT", "true")
    runs: dict[str, list[float]] = {name: [] for name in LOGGERS}
    inside: dict[str, list[float]] = {name: [] for name in LOGGERS if name != "off"}  # share of the fit in hooks
    clock = {"s": 0.0}
    build = loop.build_loggers

    def timed_loggers(cfg: ExperimentConfig, run_dir: Path) -> list:
        """The run's loggers, each hook call timed: the loggers' own share of the fit, free of run-to-run noise."""
        hooks = build(cfg, run_dir)
        for hook in hooks:
            for method in ("on_record", "on_checkpoint"):
                real = getattr(hook, method)

                def timed(*a, _real=real, **k):
                    start = time.perf_counter()
                    try:
                        return _real(*a, **k)
                    finally:
                        clock["s"] += time.perf_counter() - start

                setattr(hook, method, timed)
        return hooks

    loop.build_loggers = timed_loggers
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WANDB_DIR"] = os.environ["WANDB_CACHE_DIR"] = os.environ["WANDB_CONFIG_DIR"] = tmp
        for r in range(args.repeats):
            for name, extra in LOGGERS.items():
                cfg = bench_config(args.model, args.batch, args.steps, Path(tmp), f"{name}-{r}", "mmcl",
                                   ("train.epochs=2", *extra))  # fmt: skip
                clock["s"] = 0.0
                start = time.perf_counter()
                fit(cfg)
                seconds = time.perf_counter() - start
                runs[name].append(2 * args.batch * args.steps / seconds)
                if name in inside:
                    inside[name].append(clock["s"] / seconds)
    loop.build_loggers = build
    median = {k: statistics.median(v) for k, v in runs.items()}
    ratio = {k: median[k] / median["off"] for k in LOGGERS if k != "off"}
    share = {k: statistics.median(v) for k, v in inside.items()}
    progress_s = progress_check_seconds(Path(args.progress_study))
    payload = {
        "benchmark": "loggers",
        "machine": machine(),
        "setup": {
            "model": args.model,
            "batch": args.batch,
            "steps_per_epoch": args.steps,
            "epochs": 2,
            "repeats": args.repeats,
            "log_every": load_config("demo").train.log_every,
            "measure": "wall-clock samples/s of the whole fit (W&B start, flushes and finish included)",
        },
        "results": {"samples_per_s": runs, "share_of_fit_inside_logger_hooks": inside},
        "summary": {
            "samples_per_s_median": median,
            "spread_percent": {k: 100 * (max(v) - min(v)) / median[k] for k, v in runs.items()},
            "on_vs_off": ratio,
            "share_of_fit_inside_logger_hooks_median": share,
            "share_spread": {k: [min(v), max(v)] for k, v in inside.items()},
            "study_progress_update_s": progress_s,
            "study_progress_of": args.progress_study if progress_s is not None else None,
            "study_progress_share_of_its_interval": None if progress_s is None else progress_s / PROGRESS_EVERY_S,
            "target": "each logger costs <= 2 % of the fit (time inside its hooks; on/off ratios are noisier)",
            "met": all(v <= 0.02 for v in share.values()),
        },
    }
    path = write_result("loggers", payload)
    print(f"{path}: {payload['summary']}")


def progress_check_seconds(study_dir: Path) -> float | None:
    """Seconds one progress.json update of a finished study takes, reading all of its journals and metrics
    (it runs in the study's own process, every PROGRESS_EVERY_S seconds, never in a training process); None
    without that study."""
    from clipbackdoor.study.config import load_study_dir
    from clipbackdoor.study.plan import plan_study
    from clipbackdoor.study.progress import study_progress

    if not (study_dir / "study.yaml").is_file():
        return None
    study = load_study_dir(study_dir)
    stages = plan_study(study)
    start = time.perf_counter()
    study_progress(study, stages)
    return time.perf_counter() - start


def plain_open_clip(model_name: str, batch: int, steps: int, seed: int = 0) -> float:
    """The loop a researcher would write by hand with open_clip: forward, ClipLoss, backward, AdamW step."""
    torch.manual_seed(seed)
    bundle = create_model(load_config("demo", [f"model.name={model_name}"]).model)
    model, normalize = bundle.model, bundle.normalize
    cfg = load_config("demo", [f"data.train={{source: fashion-mnist, max_samples: {batch * steps}}}"])
    dataset = build_pair_dataset(cfg.data.train, bundle.image_size, seed, bundle.tokenizer)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, collate_fn=collate_skipping_bad)
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model.train()
    start, samples = time.perf_counter(), 0
    for b in loader:
        image_features, text_features, scale = model(normalize(b["image"]), b["text"])
        loss = loss_fn(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += len(b["index"])
    return samples / (time.perf_counter() - start)


def synthetic(model_name: str, batch: int, steps: int, objective: str, device: torch.device) -> float:
    """Samples/s of our training step (encode + objective + AdamW) on random uint8 tensors already on the
    device: the model's speed without the loader. bf16 and channels_last on a GPU, fp32 on CPU."""
    return measure(model_name, objective, batch, batch, steps, device)["synthetic_samples_per_s"]


def decoded_files(
    model_name: str, batch: int, steps: int, objective: str, workdir: Path, workers: int, decode: str = "cpu"
) -> float:
    """Samples/s of the whole loop on generated web-like JPEGs (sides 400-1600 px, as raw downloads) read
    through the CSV loader, decoded in its workers or on the device (``decode``)."""
    data = workdir / "web"
    if not data.is_dir():
        synthesize(data, pairs=batch * steps, eval_images=0, corrupt=0, min_side=400, max_side=1600, workers=2)
    cfg = load_config(
        "demo",
        [
            f"objective={OBJECTIVES[objective]}",
            f"name=files-{objective}-{decode}",
            f"output_dir={workdir}",
            f"model.name={model_name}",
            "train.epochs=1",
            f"train.batch_size={batch}",
            f"train.precision={'bf16' if torch.cuda.is_available() else 'fp32'}",
            f"train.channels_last={torch.cuda.is_available()}",
            f"data.train={{source: csv, path: {data / 'train.csv'}}}",
            f"data.num_workers={workers}",
            f"data.decode={decode}",
            "data.eval.max_samples=100",
            "eval.attack=null",
            "eval.every_epoch=false",
            "train.progress=false",
            "train.warmup_steps=1",
        ],
    )
    return fit(cfg)[-1]["time/samples_per_s"]


def scale(args: argparse.Namespace) -> None:
    """One model at its input size, MMCL and MMCL+SSL: synthetic tensors and web-like JPEG files (decoded by
    the workers, and on the device); share of the matmul peak. RN50 writes train_scale.json, others
    train_scale_<model>.json (plan reads the device's rate from them)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak_flops(n=8192 if device.type == "cuda" else 2048, dtype=dtype, device=device.type)
    flops = {k: flops_per_sample(args.model, 2, k) for k in OBJECTIVES}
    image_size = create_model(load_config("demo", [f"model.name={args.model}"]).model).image_size
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for objective in OBJECTIVES:
            files = {
                decode: decoded_files(args.model, args.batch, args.steps, objective, Path(tmp), args.workers, decode)
                for decode in ("cpu", "gpu")
            }
            results[objective] = {
                "synthetic_samples_per_s": synthetic(args.model, args.batch, args.steps, objective, device),
                "files_samples_per_s": files["cpu"],
                "files_decode_gpu_samples_per_s": files["gpu"],
            }
    payload = {
        "benchmark": "train_scale",
        "machine": machine(),
        "setup": {
            "model": args.model,
            "image_size": image_size,
            "batch": args.batch,
            "steps": args.steps,
            "device": device.type,
            "precision": "bf16 autocast, channels_last" if device.type == "cuda" else "fp32",
            "data": "synthetic uint8 tensors on the device; generated web-like JPEGs (sides 400-1600 px) via the "
            f"CSV loader, {args.workers} workers, data.decode cpu and gpu",
        },
        "results": {"per_objective": results, "train_flops_per_sample": flops, "matmul_peak_flops": peak},
        "summary": {
            "device": device.type,
            **{f"matmul_peak_share_{k}": results[k]["synthetic_samples_per_s"] * flops[k] / peak for k in OBJECTIVES},
            **{
                f"files_vs_synthetic_{k}{suffix}": results[k][key] / results[k]["synthetic_samples_per_s"]
                for k in OBJECTIVES
                for suffix, key in (("", "files_samples_per_s"), ("_decode_gpu", "files_decode_gpu_samples_per_s"))
            },
        },
    }
    path = write_result("train_scale" if args.model == "RN50" else f"train_scale_{args.model}", payload)
    print(f"{path}: {payload['summary']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-rn")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each loop; medians reported")
    parser.add_argument(
        "--scale", action="store_true", help="synthetic tensors vs JPEG files (RN50 unless --model is given)"
    )
    parser.add_argument("--workers", type=int, default=2, help="--scale: DataLoader workers for the file run")
    parser.add_argument("--loggers", action="store_true", help="TensorBoard / W&B on vs off: loggers.json")
    parser.add_argument("--progress-study", default="runs/study-fmnist", help="--loggers: a finished study whose "
                        "progress update is timed")  # fmt: skip
    args = parser.parse_args()
    if args.loggers:
        loggers(args)
        return
    if args.scale:
        if "--model" not in sys.argv:
            args.model = "RN50"
        scale(args)
        return

    peak = matmul_peak_flops()
    runs: dict[str, list[float]] = {"mmcl": [], "mmcl+ssl": [], "open_clip": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved, so drift in machine load hits all alike
            runs["mmcl"].append(ours(args.model, args.batch, args.steps, Path(tmp), str(r), "mmcl"))
            runs["open_clip"].append(plain_open_clip(args.model, args.batch, args.steps))
            runs["mmcl+ssl"].append(ours(args.model, args.batch, args.steps, Path(tmp), str(r), "mmcl+ssl"))
    sps = {k: statistics.median(v) for k, v in runs.items()}
    flops = {k: flops_per_sample(args.model, args.batch, k) for k in OBJECTIVES}
    payload = {
        "benchmark": "train",
        "machine": machine(),
        "setup": {
            "model": args.model,
            "batch": args.batch,
            "steps": args.steps,
            "repeats": args.repeats,
            "data": "Fashion-MNIST, decoded by the loader (num_workers=0)",
            "precision": "fp32",
        },
        "results": {
            "samples_per_s": runs,
            "train_flops_per_sample": flops,
            "matmul_peak_flops": peak,
        },
        "summary": {
            "loop_vs_open_clip": sps["mmcl"] / sps["open_clip"],
            "ssl_vs_mmcl": sps["mmcl+ssl"] / sps["mmcl"],
            "matmul_peak_share": sps["mmcl"] * flops["mmcl"] / peak,
            "matmul_peak_share_ssl": sps["mmcl+ssl"] * flops["mmcl+ssl"] / peak,
            "samples_per_s": sps,
        },
    }
    path = write_result("train", payload)
    print(f"{path}: {payload['summary']}")


if __name__ == "__main__":
    main()
