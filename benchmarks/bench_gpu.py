"""The recipes' pre-training step on one GPU: RN50 at 224 px, bf16 + channels_last, at each recipe's global batch
(the study's MMCL 2048 and MMCL+SSL 1024; study-cc3m-extended's RoCLIP 512 and SafeCLIP 128) with exact gradient
accumulation (clipbackdoor.train.step) over micro-batches of its per-GPU size on 8 GPUs (256 / 128 / 64 / 16),
halved until one fits. Records peak memory, samples/s and the share of
the GPU's bf16 matmul peak measured in the same run, in benchmarks/results/gpu_<model>_<precision>.json,
which `clipbackdoor plan` reads for device-hours.

    python benchmarks/bench_gpu.py                                   # on the GPU machine (a few minutes)
    python benchmarks/bench_gpu.py --model tiny-rn --scale 0.05 --out /tmp/bench   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, count_flops, machine, matmul_peak_flops

from clipbackdoor.models import create_model
from clipbackdoor.objectives import WeightedObjective
from clipbackdoor.resolve import load_config
from clipbackdoor.train.step import StepSettings, forward_backward

# objective -> (config, the recipe's global batch, its per-GPU micro-batch): the study's two, and the robust
# pre-trainings of study-cc3m-extended (their codes' global batches, and per-GPU batches on 8 GPUs)
STUDY = {
    "mmcl": ("{mmcl: 1.0}", 2048, 256),
    "mmcl+ssl": ("{mmcl: 1.0, ssl: 1.0}", 1024, 128),
    "roclip": ("{roclip: 1.0}", 512, 64),
    "safeclip": ("{safeclip: 1.0}", 128, 16),  # its in-modal pass: four views, bank neighbours
}


def measure(model_name: str, objective: str, global_batch: int, micro: int, steps: int, device: torch.device) -> dict:
    """Samples/s and peak memory of optimizer steps of ``global_batch`` pairs in micro-batches of ``micro``."""
    torch.manual_seed(0)
    bundle = create_model(load_config("demo", [f"model.name={model_name}"]).model)
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = bundle.model.to(device, memory_format=fmt)
    normalize = bundle.normalize.to(device)
    loss_fn = WeightedObjective(load_config("demo", [f"objective={STUDY[objective][0]}"]).objective).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    size = bundle.image_size
    texts = bundle.tokenizer([f"a photo of item {i}." for i in range(micro)])
    images = torch.randint(0, 256, (micro, 3, size, size), dtype=torch.uint8)
    views = {"image_aug": images.flip(-1), "image_aug2": images.flip(-2), "text_aug": texts.roll(1, 1),
             "text_aug2": texts.roll(2, 1)}  # fmt: skip
    batches = [{"image": images, "text": texts, **views}] * (global_batch // micro)

    settings = StepSettings(model, model, normalize, device, loss_fn, memory_format=fmt, bf16=cuda)

    def step() -> None:
        forward_backward(settings, batches)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, cuDNN autotuning
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "global_batch": global_batch,
        "micro_batch": micro,
        "accum_steps": global_batch // micro,
        "synthetic_samples_per_s": global_batch * steps / elapsed,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def flops_per_sample(model_name: str, batch: int, objective: str) -> float:
    """Model FLOPs of forward + backward per pair, as our step runs it (accumulation's cache pass is not
    counted: it is overhead, not model work)."""
    bundle = create_model(load_config("demo", [f"model.name={model_name}"]).model)
    loss_fn = WeightedObjective(load_config("demo", [f"objective={STUDY[objective][0]}"]).objective)
    texts = bundle.tokenizer(["a photo of a bag."] * batch)
    images = torch.randint(0, 256, (batch, 3, bundle.image_size, bundle.image_size), dtype=torch.uint8)
    micro = [{"image": images, "image_aug": images.clone(), "image_aug2": images.clone(), "text": texts,
              "text_aug": texts.clone(), "text_aug2": texts.clone()}]  # fmt: skip
    settings = StepSettings(bundle.model, bundle.model, bundle.normalize, torch.device("cpu"), loss_fn)
    return count_flops(lambda: forward_backward(settings, micro)) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RN50")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the study's batches (CPU smoke runs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak_flops(n=8192 if device.type == "cuda" else 1024, dtype=dtype, device=device.type)
    results = {}
    for objective, (_, global_batch, micro) in STUDY.items():
        global_batch, micro = max(2, int(global_batch * args.scale)), max(1, int(micro * args.scale))
        while True:
            try:
                results[objective] = measure(args.model, objective, global_batch, micro, args.steps, device)
                break
            except torch.OutOfMemoryError:
                if micro == 1:
                    raise
                micro //= 2  # exact accumulation: the same step over smaller forward passes
                torch.cuda.empty_cache()
        flops = flops_per_sample(args.model, 2, objective)
        results[objective]["train_flops_per_sample"] = flops
        results[objective]["matmul_peak_share"] = results[objective]["synthetic_samples_per_s"] * flops / peak
    precision = "bf16" if device.type == "cuda" else "fp32"
    payload = {
        "benchmark": "gpu_train_step",
        "machine": machine(),
        "setup": {
            "model": args.model,
            "image_size": 224,
            "precision": precision,
            "device": device.type,
            "channels_last": device.type == "cuda",
            "steps": args.steps,
            "data": "synthetic uint8 tensors; the study's global batch, exact accumulation",
        },
        "results": {"per_objective": results, "matmul_peak_flops": peak},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_{args.model.lower()}_{precision}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{path}: {json.dumps(results, indent=1)}")


if __name__ == "__main__":
    main()
