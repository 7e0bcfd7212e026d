"""Evaluation throughput: clean accuracy + ASR/RA in one pass against two separate passes.

The single pass decodes each image once and scores it clean and triggered; the baseline decodes the
evaluation set twice (a clean-accuracy pass, then an ASR pass). Data is file-backed: the Fashion-MNIST test
set written as PNG files and read through a labelled CSV, so decoding costs what it costs in real use.

    python benchmarks/bench_eval.py            # writes benchmarks/results/eval.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_result

from clipbackdoor.attacks import build_trigger
from clipbackdoor.config import CsvLabelled, ModelConfig
from clipbackdoor.data import BadRowLog, build_labelled_dataset, fashion_mnist
from clipbackdoor.data.transforms import to_unit
from clipbackdoor.evaluation import Attack, BackdoorTally, ZeroShotEvaluator, class_embeddings
from clipbackdoor.models import create_model

TRIGGER = {"name": "badnet", "pattern": "checkerboard", "size": 4, "reference_size": 32}
TARGET = fashion_mnist.CLASSNAMES.index("bag")


def write_png_eval_set(folder: Path, n: int, size: int) -> Path:
    """The first ``n`` test images as PNG files of ``size`` px (28 = native; larger = web-sized sources)."""
    images, labels = fashion_mnist.load_arrays(None, "test")
    lines = ["image,label"]
    for i in range(n):
        image = Image.fromarray(images[i], mode="L")
        if size != image.width:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:05d}.png")
        lines.append(f"{i:05d}.png,{labels[i]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


@torch.no_grad()
def asr_only_pass(evaluator: ZeroShotEvaluator, bundle, attack: Attack) -> dict[str, float]:
    """The second pass of the baseline: decode everything again, score triggered non-target images."""
    model, device = bundle.model.eval(), torch.device("cpu")
    weights = class_embeddings(bundle, evaluator.dataset.classnames, evaluator.dataset.templates, device)
    tally = BackdoorTally(attack.target)
    for batch in evaluator.loader:
        keep = batch["label"] != attack.target
        images = attack.trigger.apply(to_unit(batch["image"][keep]), batch["index"][keep])
        tally.add(model.encode_image(bundle.normalize(images), normalize=True) @ weights, batch["label"][keep])
    return tally.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-rn")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--source-sizes",
        type=int,
        nargs="+",
        default=[28, 224],
        help="PNG sizes to measure at; the first one gives the summary",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    bundle = create_model(ModelConfig(name=args.model))
    attack = Attack(build_trigger(TRIGGER), TARGET)
    results = {}
    for size in args.source_sizes:
        single, double = [], []
        with tempfile.TemporaryDirectory() as tmp:
            labels_csv = write_png_eval_set(Path(tmp), args.samples, size)
            cfg = CsvLabelled(
                path=str(labels_csv),
                classnames=list(fashion_mnist.CLASSNAMES),
                templates=list(fashion_mnist.PROMPT_TEMPLATES),
            )
            dataset = build_labelled_dataset(cfg, bundle.image_size)
            one = ZeroShotEvaluator(dataset, args.batch, 0, BadRowLog(0), attack)
            clean_only = ZeroShotEvaluator(dataset, args.batch, 0, BadRowLog(0))
            for _ in range(args.repeats):  # interleaved
                start = time.perf_counter()
                result_one = one(bundle, torch.device("cpu"))
                single.append(args.samples / (time.perf_counter() - start))
                start = time.perf_counter()
                result_clean = clean_only(bundle, torch.device("cpu"))
                result_asr = asr_only_pass(clean_only, bundle, attack)
                double.append(args.samples / (time.perf_counter() - start))
        assert result_one["clean_top1"] == result_clean["clean_top1"]
        assert result_one["asr_top1"] == result_asr["asr_top1"]
        results[f"png_{size}px"] = {
            "single_pass_samples_per_s": single,
            "two_pass_samples_per_s": double,
            "single_vs_two_pass": statistics.median(single) / statistics.median(double),
        }
    first = results[f"png_{args.source_sizes[0]}px"]
    payload = {
        "benchmark": "eval",
        "machine": machine(),
        "setup": {
            "model": args.model,
            "samples": args.samples,
            "batch": args.batch,
            "repeats": args.repeats,
            "data": "Fashion-MNIST test images as PNG files (native 28 px, and upscaled as web-sized "
            "sources would be), labelled CSV, decoded + resized by the loader",
            "trigger": TRIGGER,
        },
        "results": results,
        "summary": {
            "single_vs_two_pass": first["single_vs_two_pass"],
            "source_size_px": args.source_sizes[0],
            **{f"single_vs_two_pass_{k}": v["single_vs_two_pass"] for k, v in results.items()},
        },
    }
    path = write_result("eval", payload)
    print(f"{path}: {payload['summary']}")


if __name__ == "__main__":
    main()
