"""Zero-shot clean accuracy of one fixed checkpoint through the reference decode path and through ours.

The loader's decode path (torchvision's JPEG decoder and torch's resize kernel; for other images PIL with
reduced-scale decoding and one bicubic pass over the crop's box) changes pixels by at most ~1/255 per image
(tests/test_decode_fidelity.py). This checks what that does to a measured number: the Fashion-MNIST test
images, upscaled 10x (bicubic) and saved as JPEGs (quality 90), are scored by the same checkpoint twice:
decoded in full by PIL, resized and cropped (the definition), and through the loader. Target: the
checkpoint's CA is at least 70 % and the two differ by at most 0.5 points.

    python benchmarks/check_decode_ca.py runs/study-fmnist/pretrain/mmcl    # writes results/decode_ca.json
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_data import FilesOnly, FullDecodeResizeCrop
from common import machine, write_result

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.data import BadRowLog, fashion_mnist
from clipbackdoor.data.csv_source import CsvLabelRows
from clipbackdoor.data.datasets import LabelledDataset
from clipbackdoor.data.transforms import ResizeCenterCrop
from clipbackdoor.evaluation.zeroshot import ZeroShotEvaluator
from clipbackdoor.models import create_model
from clipbackdoor.resolve import load_config

CA_FLOOR, MAX_GAP = 70.0, 0.5


def write_jpegs(out: Path, root: str | None, count: int, factor: int) -> Path:
    """The first ``count`` Fashion-MNIST test images, ``factor`` times larger, as JPEGs + ``labels.csv``."""
    rows = fashion_mnist.FashionMNISTRows(root, "test", count)
    (out / "images").mkdir(parents=True)
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        for i in range(len(rows)):
            image = rows.pil(i).convert("RGB")
            image.resize((28 * factor, 28 * factor), Image.Resampling.BICUBIC).save(
                out / "images" / f"{i:05d}.jpg", quality=90
            )
            writer.writerow([f"images/{i:05d}.jpg", rows.label(i)])
    return out / "labels.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory (its latest checkpoint and config are used)")
    parser.add_argument("--images", type=int, default=10_000, help="Fashion-MNIST test images scored")
    parser.add_argument("--factor", type=int, default=10, help="upscaling before the JPEG is written")
    parser.add_argument("--out-name", default="decode_ca")
    args = parser.parse_args()
    weights = ckpt.resolve_weights(str(args.run))
    cfg = load_config(args.run / "config.yaml", [f"model.checkpoint={weights}"])
    bundle = create_model(cfg.model)
    size, device = bundle.image_size, torch.device("cpu")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        labels = write_jpegs(Path(tmp), getattr(cfg.data.eval, "root", None), args.images, args.factor)
        rows = CsvLabelRows(labels, len(fashion_mnist.CLASSNAMES))
        paths = (("reference", FilesOnly(rows), FullDecodeResizeCrop(size)), ("ours", rows, ResizeCenterCrop(size)))
        for name, source, transform in paths:
            dataset = LabelledDataset(source, transform, fashion_mnist.CLASSNAMES, fashion_mnist.PROMPT_TEMPLATES)
            scored = ZeroShotEvaluator(dataset, 500, 0, BadRowLog(0))(bundle, device)
            results[name] = scored["clean_top1"]
        diffs = []
        for i in range(0, len(rows), max(1, len(rows) // 200)):  # pixels, on a sample of the images
            ours = dataset[i]["image"].permute(1, 2, 0).numpy().astype(np.float64)
            with rows.pil(i) as b:
                reference = np.asarray(FullDecodeResizeCrop(size).resize(b), dtype=np.float64)
            diffs.append(np.abs(ours - reference).mean())
    gap = results["ours"] - results["reference"]
    payload = {
        "benchmark": "decode_ca",
        "machine": machine(),
        "checkpoint": str(weights),
        "eval_set": f"Fashion-MNIST test, first {len(rows)} images, upscaled {args.factor}x, JPEG quality 90",
        "model_input": size,
        "ca_reference": results["reference"],
        "ca_ours": results["ours"],
        "ca_gap_points": gap,
        "pixels": {
            "mean_abs_diff_max": max(diffs),
            "mean_abs_diff_mean": float(np.mean(diffs)),
            "images_compared": len(diffs),
        },
        "target": {"ca_at_least": CA_FLOOR, "gap_at_most": MAX_GAP},
        "met": results["reference"] >= CA_FLOOR and abs(gap) <= MAX_GAP,
    }
    path = write_result(args.out_name, payload)
    print(
        f"{path}: CA reference {results['reference']:.2f}, ours {results['ours']:.2f} (gap {gap:+.2f}); "
        f"met={payload['met']}"
    )


if __name__ == "__main__":
    main()
