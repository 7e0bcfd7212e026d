"""Pre-training throughput: our training loop against a plain open_clip loop, and MMCL+SSL against MMCL.

- ``loop_vs_open_clip``: both loops read the same DataLoader (same dataset, batch size and order) and run
  the same model, CLIP loss and optimizer, so the ratio is the overhead our loop adds (metrics, checkpoints,
  schedule, guards); target ≥ 0.95.
- ``ssl_vs_mmcl``: our loop with MMCL+SSL (two views per pair: twice the forward/backward, plus AutoAugment
  and EDA in the loader) against MMCL at the same batch; 0.5 is the ideal, target ≥ 0.45.
- ``matmul_peak_share``: each objective's model FLOP/s as a share of the measured fp32 matmul peak.

    python benchmarks/bench_train.py            # writes benchmarks/results/train.json
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
from common import count_flops, machine, matmul_peak_flops, write_result

from clipbackdoor.config import load_config
from clipbackdoor.data import build_pair_dataset, collate_skipping_bad
from clipbackdoor.models import create_model
from clipbackdoor.objectives import WeightedObjective
from clipbackdoor.train.loop import encode, fit

OBJECTIVES = {"mmcl": "{mmcl: 1.0}", "mmcl+ssl": "{mmcl: 1.0, ssl: 1.0}"}


def ours(model: str, batch: int, steps: int, workdir: Path, tag: str, objective: str = "mmcl") -> float:
    cfg = load_config(
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
        ],
    )
    return fit(cfg)[-1]["time/samples_per_s"]


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


def flops_per_sample(model_name: str, batch: int, objective: str) -> float:
    """FLOPs of one training step (forward + backward) per pair, as our loop runs it."""
    bundle = create_model(load_config("demo", [f"model.name={model_name}"]).model)
    loss_fn = WeightedObjective(load_config("demo", [f"objective={OBJECTIVES[objective]}"]).objective)
    size = bundle.image_size
    texts = bundle.tokenizer(["a photo of a bag."] * batch)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    data = {"image": images, "image_aug": images.clone(), "text": texts, "text_aug": texts.clone()}

    def step() -> None:
        loss_fn(encode(bundle.model, bundle.normalize, data, torch.device("cpu"), loss_fn.views))[0].backward()

    return count_flops(step) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-rn")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each loop; medians reported")
    args = parser.parse_args()

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
