from pathlib import Path

import pytest
import torch

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.cleaning import cleaning_config
from clipbackdoor.config import ConfigError, ModelConfig
from clipbackdoor.defenses import DEFENSES, DefenseError, build_defense
from clipbackdoor.defenses.deep_clustering import spherical_kmeans
from clipbackdoor.defenses.shrink_perturb import shrink_perturb_
from clipbackdoor.models import create_model
from clipbackdoor.train.loop import fit

from .conftest import YELLOW, poisoned_run

RECIPES = ["cleanclip", "mmcl-only", "ssl-only", "heavy-wd", "shrink-perturb", "deep-clustering", "par"]
CLEAN_TINY = ["train.epochs=1", "train.batch_size=16", "train.warmup_steps=1", "train.lr=1e-4"]


def test_every_defense_has_a_recipe_and_the_recipes_run_one_tiny_epoch(poisoned: Path) -> None:
    used = set()
    for recipe in RECIPES:
        cfg = cleaning_config(poisoned, recipe, CLEAN_TINY)
        used.add(cfg.defense["name"])
        assert cfg.data.train.path.endswith("cleaning.csv")
        assert cfg.model.checkpoint == str(ckpt.latest_checkpoint(poisoned)["weights"])
        records = fit(cfg)
        assert [r["epoch"] for r in records] == [0, 1], recipe
        assert {"eval/clean_top1", "eval/asr_top1", "eval/ra_top1"} <= set(records[1])
    assert used == set(DEFENSES)
    assert cleaning_config(poisoned, "heavy-wd", []).train.weight_decay == 10.0
    assert cleaning_config(poisoned, "ssl-only", []).objective == {"ssl": 1.0}
    assert cleaning_config(poisoned, "cleanclip", ["defense.ssl=4"]).objective == {"mmcl": 1.0, "ssl": 4.0}


def test_epoch_zero_is_the_poisoned_model(poisoned: Path) -> None:
    poisoned_last = [r for r in _epochs(poisoned)][-1]
    cleaned = fit(cleaning_config(poisoned, "mmcl-only", CLEAN_TINY, name="epoch0"))
    assert cleaned[0]["eval/asr_top1"] == poisoned_last["eval/asr_top1"]
    assert cleaned[0]["eval/clean_top1"] == poisoned_last["eval/clean_top1"]


def test_cleaning_starts_with_a_fresh_optimizer(poisoned: Path) -> None:
    cfg = cleaning_config(poisoned, "cleanclip", CLEAN_TINY, name="fresh")
    fit(cfg)
    pre = ckpt.load_state(ckpt.latest_checkpoint(poisoned)["state"])
    post = ckpt.load_state(ckpt.latest_checkpoint(cfg.run_dir)["state"])
    steps = 64 // 16  # one cleaning epoch
    assert post["step"] == steps
    adam_steps = {float(s["step"]) for s in post["optimizer"]["state"].values()}
    assert adam_steps == {float(steps)}, "Adam moments were not carried over from pre-training"
    assert pre["step"] != post["step"]
    assert post["optimizer"]["param_groups"][0]["weight_decay"] == cfg.train.weight_decay


def test_shrink_perturb_arithmetic() -> None:
    torch.manual_seed(0)
    model, fresh = create_model(ModelConfig(name="tiny-rn")).model, create_model(ModelConfig(name="tiny-rn")).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shrink_perturb_(model, fresh, 0.95, 1e-4)
    fresh_params = dict(fresh.named_parameters())
    for name, param in model.named_parameters():
        assert torch.allclose(param, 0.95 * before[name] + 1e-4 * fresh_params[name], atol=1e-7), name
    assert torch.equal(model.state_dict()["visual.bn1.running_var"], before["visual.bn1.running_var"])


def test_spherical_kmeans_recovers_constructed_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    directions = torch.eye(8)[:3] * 5
    labels = torch.arange(90) % 3
    points = directions[labels] + 0.3 * torch.randn(90, 8, generator=g)
    assign = spherical_kmeans(points, 3, iters=20, generator=g)
    for c in range(3):  # each true cluster lands in exactly one k-means cluster, and vice versa
        assert len(set(assign[labels == c].tolist())) == 1
    assert len(set(assign.tolist())) == 3


def test_defense_parameters_are_validated(poisoned: Path) -> None:
    with pytest.raises(DefenseError, match=r"defense\.shrink"):
        build_defense({"name": "shrink-perturb", "shrink": 2.0})
    with pytest.raises(DefenseError, match="unknown defense"):
        build_defense({"name": "antidote"})
    with pytest.raises(ConfigError, match="neither a YAML file nor a built-in"):
        cleaning_config(poisoned, "antidote", [])


def _epochs(run: Path) -> list[dict]:
    from clipbackdoor.metrics_log import read_records

    return [r for r in read_records(run / "metrics.jsonl") if r["kind"] == "epoch"]


def test_cleaning_a_tiny_poisoned_model_lowers_its_asr(fmnist_root: Path, tmp_path: Path) -> None:
    corner = YELLOW.replace("location: random", "location: bottom-right")  # a backdoor 6 tiny epochs implant
    run = poisoned_run(
        fmnist_root, tmp_path, corner, **{"train.epochs": 6, "train.lr": 2e-3, "eval.every_epoch": False}
    )
    before = _epochs(run)[-1]
    assert before["eval/asr_top1"] >= 50, "the tiny model must carry the backdoor for this test to mean anything"
    cleaned = fit(cleaning_config(run, "mmcl-only", ["train.epochs=8", "train.batch_size=16", "train.lr=1e-3",
                                                     "train.warmup_steps=1", "eval.every_epoch=true"]))  # fmt: skip
    assert cleaned[0]["eval/asr_top1"] == before["eval/asr_top1"]
    assert cleaned[-1]["eval/asr_top1"] <= before["eval/asr_top1"] - 20
    assert cleaned[-1]["eval/clean_top1"] >= before["eval/clean_top1"] - 10  # cleaned, not destroyed
