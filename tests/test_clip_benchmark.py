"""CLIP_benchmark runs our exported checkpoints, and `evaluate --format clip_benchmark` writes its schema.

The reference is CLIP_benchmark itself: its own WebDataset converter writes the eval set, its own command
line evaluates the `export --hf` directory, and its JSON is compared with ours for the same checkpoint."""

import json
import subprocess
from pathlib import Path

import pytest

from clipbackdoor.cli import main

# CLIP_benchmark lives in its own venv (Makefile: it brings transformers, which open_clip would import in
# every process of ours), layered on ours; its own code writes the eval set and evaluates
CLIP_BENCHMARK_PYTHON = Path(__file__).resolve().parents[1] / ".venv-clip-benchmark" / "bin" / "python"


# CLIP_benchmark's command line, with one fix: its accuracy() calls float() on a 1-element array, which
# NumPy >= 2.4 refuses (LAION-AI/CLIP_benchmark#147, open); the fix sums to a scalar instead
RUN_CLIP_BENCHMARK = """
import sys
import clip_benchmark.metrics.zeroshot_classification as zs
from clip_benchmark.cli import main

def accuracy(output, target, topk=(1,)):
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum()) / len(target) for k in topk]

zs.accuracy = accuracy
sys.argv[0] = "clip_benchmark"
sys.exit(main())
"""


# our eval set (the run's config), written by CLIP_benchmark's own WebDataset converter
CONVERT_EVAL_SET = """
import sys
from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset
from clipbackdoor.resolve import load_config
from clipbackdoor.data import build_labelled_dataset

class EvalImages:
    def __init__(self, dataset):
        self.rows, self.classes = dataset.rows, dataset.classnames
        self.templates = [t.replace("{}", "{c}") for t in dataset.templates]  # CLIP_benchmark's placeholder

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows.pil(i).convert("RGB"), self.rows.label(i)

dataset = build_labelled_dataset(load_config(sys.argv[1]).data.eval, 32)
convert_dataset(EvalImages(dataset), "test", sys.argv[2], transform=PIL_to_bytes("png"), image_format="png",
                verbose=False)
"""


@pytest.mark.slow  # two CLIP_benchmark processes (about a minute): make test-slow, with the other end-to-end checks
def test_clip_benchmark_evaluates_the_hub_export_in_the_schema_we_write(poisoned: Path, tmp_path: Path) -> None:
    if not CLIP_BENCHMARK_PYTHON.is_file():
        pytest.skip(f"no {CLIP_BENCHMARK_PYTHON}: `make test-slow` builds CLIP_benchmark's venv")
    hub = tmp_path / "hub"
    assert main(["export", str(poisoned), str(hub), "--hf"]) == 0
    wds_root = tmp_path / "wds" / "fmnist"
    convert = [str(CLIP_BENCHMARK_PYTHON), "-c", CONVERT_EVAL_SET, str(poisoned / "config.yaml"), str(wds_root)]
    done = subprocess.run(convert, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs_path = tmp_path / "theirs.json"
    command = [
        str(CLIP_BENCHMARK_PYTHON), "-c", RUN_CLIP_BENCHMARK, "eval", "--model", f"local-dir:{hub}", "--pretrained", "",
        "--dataset", "wds/fmnist", "--dataset_root", str(wds_root), "--task", "zeroshot_classification",
        "--no_amp", "--num_workers", "0", "--batch_size", "20", "--output", str(theirs_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(theirs_path.read_text())

    ours_path = tmp_path / "ours.json"
    assert main(["evaluate", str(poisoned), "--format", "clip_benchmark", "--out", str(ours_path)]) == 0
    ours = json.loads(ours_path.read_text())
    assert ours.keys() == theirs.keys()  # dataset, model, pretrained, task, metrics, language
    assert ours["task"] == theirs["task"] == "zeroshot_classification" and ours["language"] == theirs["language"]
    assert set(theirs["metrics"]) <= set(ours["metrics"])  # acc1, acc5, mean_per_class_recall, then ours
    assert {"asr_top1", "asr_top5", "ra_top1"} <= set(ours["metrics"])
    for key, value in theirs["metrics"].items():
        assert type(ours["metrics"][key]) is type(value) and 0 <= ours["metrics"][key] <= 1
    # the same model on the same images and prompts: only the resize differs (open_clip's vs ours)
    assert abs(ours["metrics"]["acc1"] - theirs["metrics"]["acc1"]) <= 0.1
