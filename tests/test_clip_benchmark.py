"""CLIP_benchmark runs our exported checkpoints, and `evaluate --format clip_benchmark` writes its schema.

The reference is CLIP_benchmark itself: its own WebDataset converter writes the eval set, its own command
line evaluates the `export --hf` directory, and its JSON is compared with ours for the same checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import Dataset

from clipbackdoor.cli import main
from clipbackdoor.config import load_config
from clipbackdoor.data import build_labelled_dataset

webdataset_builder = pytest.importorskip("clip_benchmark.webdataset_builder")  # the [benchmark] extra


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


class _EvalImages(Dataset):
    """Our eval set as CLIP_benchmark's converter takes it: (PIL image, label), ``.classes``, ``.templates``."""

    def __init__(self, rows, classes: list[str], templates: list[str]):
        self.rows, self.classes = rows, classes
        self.templates = [t.replace("{}", "{c}") for t in templates]  # CLIP_benchmark's placeholder

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows.pil(i).convert("RGB"), self.rows.label(i)


def test_clip_benchmark_evaluates_the_hub_export_in_the_schema_we_write(poisoned: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    assert main(["export", str(poisoned), str(hub), "--hf"]) == 0
    cfg = load_config(poisoned / "config.yaml")
    ours_eval = build_labelled_dataset(cfg.data.eval, 32)
    wds_root = tmp_path / "wds" / "fmnist"
    images = _EvalImages(ours_eval.rows, ours_eval.classnames, ours_eval.templates)
    webdataset_builder.convert_dataset(
        images, "test", str(wds_root), transform=webdataset_builder.PIL_to_bytes("png"), image_format="png",
        verbose=False,
    )  # fmt: skip
    theirs_path = tmp_path / "theirs.json"
    command = [
        sys.executable, "-c", RUN_CLIP_BENCHMARK, "eval", "--model", f"local-dir:{hub}", "--pretrained", "",
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
