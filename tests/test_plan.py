"""One meaning of the batch size, and `clipbackdoor plan`: the paper's numbers before anything runs."""

import json
from pathlib import Path

import open_clip
import pytest
import torch

from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError, TrainConfig
from clipbackdoor.data.batching import batch_layout
from clipbackdoor.models import create_model
from clipbackdoor.resolve import load_config
from clipbackdoor.study.config import load_study_config
from clipbackdoor.study.plan import launcher_processes, plan_experiment, plan_study

CC3M_PAIRS = 2_725_316


def test_the_batch_is_global_and_splits_into_processes_and_micro_batches() -> None:
    train = TrainConfig(batch_size=2048, micro_batch=256)
    for world, per_process, accum in ((1, 2048, 8), (2, 1024, 4), (8, 256, 1)):
        layout = batch_layout(train, world)
        assert (layout.per_process, layout.micro_batch, layout.accum_steps) == (per_process, 256, accum)
        assert layout.steps_per_epoch(CC3M_PAIRS) == CC3M_PAIRS // 2048 == 1330  # the same on any world size
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        batch_layout(train, 3)
    with pytest.raises(ConfigError, match=r"train\.micro_batch=256 must divide the per-process batch 128"):
        batch_layout(train, 16)
    assert batch_layout(TrainConfig(batch_size=64), 1).accum_steps == 1  # micro-batch defaults to the whole
    with pytest.raises(ConfigError, match="accum_steps is derived"):
        load_config("demo", ["train.accum_steps=2"])


@pytest.mark.parametrize("gpus", [8, 1])
def test_plan_of_the_cc3m_study_matches_the_paper(gpus: int) -> None:
    stages = {s.name: s for s in plan_study(load_study_config("study-cc3m"), gpus=gpus)}
    mmcl, ssl = stages["pre-train mmcl"], stages["pre-train mmcl-ssl"]
    assert mmcl.pairs.n == CC3M_PAIRS and "expected_pairs" in mmcl.pairs.source
    assert (mmcl.layout.global_batch, mmcl.layout.per_process, mmcl.layout.micro_batch) == (2048, 2048 // gpus, 256)
    assert mmcl.layout.accum_steps == 8 // gpus
    assert (mmcl.steps_per_epoch, mmcl.total_steps) == (1330, 1330 * 64)
    assert 0.11 < mmcl.warmup_steps / mmcl.total_steps < 0.12  # the study's ≈ 12 %
    assert (ssl.layout.global_batch, ssl.layout.micro_batch, ssl.steps_per_epoch) == (1024, 128, CC3M_PAIRS // 1024)
    assert any("data.eval.labels" in w for w in mmcl.warnings)  # the ImageNet paths are placeholders here
    clean = {name: s for name, s in stages.items() if name.startswith("clean")}
    assert len(clean) == 6
    for name, stage in clean.items():  # single-device cleaning at the study's batch, 20 epochs on 100k pairs
        assert stage.processes == 1 and stage.epochs == 20 and stage.pairs.n == 100_000
        assert stage.layout.global_batch == (128 if "mmcl-only" in name else 64)
        assert stage.layout.accum_steps == 1
    assert clean["clean mmcl--cleanclip"].runs == 32 and clean["clean mmcl--ssl-only"].runs == 11


@pytest.mark.parametrize("gpus", [8, 2])
def test_plan_of_the_extended_cc3m_study_keeps_the_regimes_recipes(gpus: int) -> None:
    """The robust regimes at their reference codes' batch, epochs and warm-up on any GPU count; the filtered
    re-trainings after the paper's stages; the paper's stages as study-cc3m plans them."""
    stages = {s.name: s for s in plan_study(load_study_config("study-cc3m-extended"), gpus=gpus)}
    paper = {s.name: s for s in plan_study(load_study_config("study-cc3m"), gpus=gpus)}

    def shape(stage) -> tuple:  # what the run does (its directory differs: another study's)
        return stage.processes, stage.layout, stage.pairs.n, stage.epochs, stage.warmup_steps, stage.runs

    assert all(shape(stages[name]) == shape(stage) for name, stage in paper.items())
    roclip, safeclip = stages["pre-train roclip"], stages["pre-train safeclip"]
    # both reference codes divide --batch_size by the GPU count (RoCLIP main.py:63, SafeCLIP main.py:65): global
    assert (roclip.layout.global_batch, roclip.layout.micro_batch, roclip.epochs) == (512, 64, 24)
    assert (safeclip.layout.global_batch, safeclip.layout.micro_batch, safeclip.epochs) == (128, 16, 32)
    assert roclip.total_steps == (CC3M_PAIRS // 512) * 24 and roclip.warmup_steps == safeclip.warmup_steps == 10_000
    assert not any(name.startswith("clean roclip") or name.startswith("clean safeclip") for name in stages)
    filtered = [name for name in stages if name.startswith("detect with")]
    assert filtered == list(stages)[-2:] and len(filtered) == 2
    assert stages[filtered[0]].pairs.n == CC3M_PAIRS - round(CC3M_PAIRS / 100)


@pytest.mark.parametrize("gpus", [8, 2])
def test_plan_of_the_cc3m_attack_study_runs_the_paper_s_stages_per_attack(gpus: int) -> None:
    """Every attack's stages as study-cc3m plans them, on any GPU count; the clean model at the MMCL recipe's
    shape first; the seeds axis for BadCLIP alone; detection without re-training."""
    stages = {s.name: s for s in plan_study(load_study_config("study-attacks-cc3m"), gpus=gpus)}
    paper = {s.name: s for s in plan_study(load_study_config("study-cc3m"), gpus=gpus)}

    def shape(stage) -> tuple:
        return stage.processes, stage.layout, stage.pairs.n, stage.epochs, stage.warmup_steps, stage.runs

    assert next(iter(stages)) == "pre-train clean-model"
    assert shape(stages["pre-train clean-model"]) == shape(paper["pre-train mmcl"])
    for attack in ("badnet", "blended", "badclip"):
        assert all(shape(stages[f"[{attack}] {name}"]) == shape(stage) for name, stage in paper.items())
    assert "50 epochs × 156 steps = 7,800 steps" in stages["[badclip] pre-train mmcl"].before  # 10k pairs / 64
    assert stages["[badnet] pre-train mmcl"].before is None
    seeded = [name for name in stages if "seed" in name]
    assert seeded and all(name.startswith("[badclip]") for name in seeded)
    assert not any("detect with" in name for name in stages)
    finetuned = {s.name: s for s in plan_study(load_study_config("study-attacks-cc3m", ["finetune={}"]), gpus=gpus)}
    start = "runs/study-attacks-cc3m/pretrain/clean-model"
    assert f"[badclip] fine-tune (from {start}) mmcl" in finetuned and "pre-train clean-model" in finetuned
    assert not any(name.startswith("[badnet] pre-train") for name in finetuned)


def test_cc6m_cleans_on_200k_pairs_for_10_epochs() -> None:
    stages = plan_study(load_study_config("study-cc6m"), gpus=8)
    for stage in stages:
        if stage.name.startswith("clean"):
            assert (stage.pairs.n, stage.epochs) == (200_000, 10)


def test_plan_warns_naming_the_key(fmnist_root: Path, tmp_path: Path) -> None:
    """The old meaning's mistake (2048 per process on 8 GPUs) shows as warm-up over most of the steps."""
    cfg = load_config("cc3m", ["train.batch_size=16384", "train.micro_batch=2048"])
    (stage,) = plan_experiment(cfg, gpus=8)
    assert stage.steps_per_epoch == 166
    assert any(w.startswith("train.warmup_steps=10000 is 94%") for w in stage.warnings), stage.warnings
    cfg = load_config("cc3m", ["poison.image_size=64"])
    assert any(w.startswith("poison.image_size=64 but RN50 takes 224 px") for w in plan_experiment(cfg)[0].warnings)
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\n" + "".join(f"{i}.png,a photo\n" for i in range(100)))
    cfg = load_config("demo", [f"data.train={{source: csv, path: {csv}}}", "train.batch_size=32", "train.epochs=1"])
    (stage,) = plan_experiment(cfg)
    assert (stage.pairs.n, stage.steps_per_epoch) == (100, 3) and str(csv) in stage.pairs.source


def test_plan_warns_of_a_checkpoint_trained_with_quick_gelu(tmp_path: Path) -> None:
    """The warning is create_model's refusal, word for word; the '-quickgelu' model silences both."""
    state = open_clip.create_model("tiny-rn", force_quick_gelu=True).state_dict()
    path = tmp_path / "epoch_10.pt"
    prefixed = {f"module.{k}": v for k, v in state.items()}  # CleanCLIP's layout under DDP
    torch.save({"epoch": 10, "name": "cleanclip", "state_dict": prefixed, "optimizer": {}}, path)
    cfg = load_config("demo", [f"model.checkpoint={path}"])
    with pytest.raises(ConfigError) as refusal:
        create_model(cfg.model)
    (stage,) = plan_experiment(cfg)
    assert str(refusal.value) in stage.warnings and "model.name=tiny-rn-quickgelu" in str(refusal.value)
    (stage,) = plan_experiment(load_config("demo", [f"model.checkpoint={path}", "model.name=tiny-rn-quickgelu"]))
    assert not any(w.startswith("model.checkpoint") for w in stage.warnings), stage.warnings


def test_device_hours_come_from_a_measurement_named_in_the_plan(tmp_path: Path, capsys) -> None:
    cfg = load_config("cc3m", [])
    (stage,) = plan_experiment(cfg, gpus=8, bench_dirs=(tmp_path,))
    assert stage.device_hours is None
    result = {"setup": {"model": "RN50", "precision": "bf16", "device": "cuda"},
              "results": {"per_objective": {"mmcl": {"synthetic_samples_per_s": 1000.0}}}}  # fmt: skip
    (tmp_path / "gpu_rn50.json").write_text(json.dumps(result))
    (stage,) = plan_experiment(cfg, gpus=8, bench_dirs=(tmp_path,))
    assert stage.device_hours == pytest.approx(1330 * 64 * 2048 / 1000 / 3600)
    assert stage.throughput is not None and "gpu_rn50.json" in stage.throughput[1]
    assert main(["plan", "study-cc3m", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "global 2,048 = 8 × 256 per process" in out and "1,330 per epoch × 64 epochs = 85,120" in out
    assert "warm-up 10,000 steps = 11.7%" in out


def test_launcher_processes() -> None:
    assert launcher_processes([]) == 1
    assert launcher_processes(["torchrun", "--standalone", "--nproc_per_node", "8"]) == 8
    assert launcher_processes(["torchrun", "--nproc-per-node=4"]) == 4


def test_throughput_lookup_skips_other_benchmarks_files(tmp_path: Path) -> None:
    from clipbackdoor.study.measurements import find_throughput

    (tmp_path / "kmeans.json").write_text(json.dumps([{"n": 5000, "seconds": 1.0}]))
    (tmp_path / "sweep.json").write_text(json.dumps({"results": [1, 2]}))
    assert find_throughput("RN50", "bf16", "mmcl", (tmp_path,)) is None
    record = {"setup": {"model": "RN50", "precision": "bf16", "device": "H200"},
              "results": {"per_objective": {"mmcl": {"synthetic_samples_per_s": 1234.0}}}}  # fmt: skip
    (tmp_path / "gpu_rn50.json").write_text(json.dumps(record))
    rate, source, device = find_throughput("RN50", "bf16", "mmcl", (tmp_path,))
    assert rate == 1234.0 and "gpu_rn50.json" in source and device == "H200"


def test_plan_says_whether_the_loader_can_feed_the_devices(tmp_path: Path) -> None:
    """Loader cores × the measured rate per core, for the training images' size, against the device's rate."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.new("RGB", (340, 256), (i, 0, 0)).save(tmp_path / "img" / f"{i}.jpg")
    (tmp_path / "train.csv").write_text("image,caption\n" + "".join(f"img/{i}.jpg,a photo {i}\n" for i in range(3)))
    bench = tmp_path / "bench"
    bench.mkdir()
    gpu = {"setup": {"model": "RN50", "precision": "bf16", "device": "cuda"},
           "results": {"per_objective": {"mmcl": {"synthetic_samples_per_s": 3000.0}}}}  # fmt: skip
    (bench / "gpu_rn50.json").write_text(json.dumps(gpu))
    rates = {"raw": 50.0, "256px": 400.0}
    data = {"regimes": {regime: {"mmcl": {"csv": {"ours": {"samples_per_s_per_core": rate}},
                                          "decode_gpu": {"loader_per_core": 2000.0}}}
                        for regime, rate in rates.items()}}  # fmt: skip
    (bench / "data.json").write_text(json.dumps(data))
    cfg = load_config("cc3m", [f"data.train={{source: csv, path: {tmp_path / 'train.csv'}}}", "data.num_workers=6"])
    (stage,) = plan_experiment(cfg, gpus=8, bench_dirs=(bench,), cores=64)
    assert stage.feed is not None and "256px JPEGs: median shorter side 256 px over 3 images" in stage.feed
    assert "6 loader core(s) per process × 400/s per core" in stage.feed and "= 2,400/s" in stage.feed
    starving = [w for w in stage.warnings if "the GPUs will wait" in w]
    assert starving and "~8 cores per process" in starving[0] and "data.decode: gpu" in starving[0]
    (stage,) = plan_experiment(cfg.model_copy(update={"data": cfg.data.model_copy(update={"decode": "gpu"})}),
                               gpus=8, bench_dirs=(bench,), cores=64)  # fmt: skip
    assert "× 2,000/s per core" in stage.feed and not any("GPUs will wait" in w for w in stage.warnings)
    (stage,) = plan_experiment(cfg, gpus=8, bench_dirs=(bench,), cores=16)
    assert any("wants 48 loader cores; the node has 16" in w for w in stage.warnings)
    assert "2 loader core(s) per process" in stage.feed


def test_the_demo_does_not_warn_about_itself_and_its_plan_speaks_of_the_cpu(tmp_path: Path) -> None:
    """Before poisoning (a fresh machine): the images poisoning will write are sized from its source, every
    warm-up fits its run, and rates measured on the CPU are the CPU's, in CPU-hours."""
    from clipbackdoor.study.plan import format_plan

    stages = plan_study(load_study_config("study-demo", [f"output_dir={tmp_path}"]))
    assert [w for s in stages for w in s.warnings] == []
    text = format_plan(stages)
    assert "Fashion-MNIST's 28 px images, as poisoning will write them" in text
    assert "CPU-hours" in text and "GPU" not in text and "the device" not in text
    assert "measured at 224 px: not compared with training at 32 px" in text  # tiny-rn takes 32 px
