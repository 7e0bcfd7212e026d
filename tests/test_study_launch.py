"""The study's pre-training runs as a subprocess under its own launcher, its cleaning trials under theirs."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from clipbackdoor.cli import main
from clipbackdoor.config import ConfigError
from clipbackdoor.study.config import load_study_config, pretrain_command

from .conftest import tiny_overrides
from .test_sweep_devices import launched, recording_launcher


def write_study(path: Path, fmnist_root: Path, **fields) -> Path:
    """One tiny objective, one one-point sweep: the stages of the demo study on the tiny data set."""
    base = dict(o.split("=", 1) for o in tiny_overrides(fmnist_root, path.parent, **{"train.epochs": 1}))
    for key in ("name", "output_dir", "data.train", "eval.attack"):  # the study sets these itself
        del base[key]
    base.update({"poison.source": f"{{source: fashion-mnist, root: {fmnist_root}, max_samples: 64}}",
                 "poison.num_poisons": "8", "poison.cleaning": "{size: 16}", "poison.image_size": "32"})  # fmt: skip
    cleaning = {"train.epochs": 1, "train.batch_size": 16, "train.warmup_steps": 1, "train.keep_last": 1}
    spec = {
        "name": "tiny-study",
        "output_dir": str(path.parent),
        "base": "demo",
        "overrides": {key: yaml.safe_load(value) for key, value in base.items()},
        "pretrain": {"mmcl": {"overrides": {"objective": {"mmcl": 1.0}}}},
        "defenses": {
            "mmcl-only": {"space": {"train.lr": {"choices": [1e-3]}}, "sampler": "grid", "overrides": cleaning}
        },
        **fields,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_an_old_launcher_key_is_refused_with_its_replacements(tmp_path: Path) -> None:
    config = write_study(tmp_path / "study.yaml", tmp_path, launcher=["torchrun", "--nproc_per_node", "8"])
    with pytest.raises(ConfigError, match=r"'launcher' is replaced by 'pretrain_launcher' .*'clean_launcher'"):
        load_study_config(config)
    config = write_study(tmp_path / "study.yaml", tmp_path, launcher=[])  # as an older study.yaml holds it
    assert load_study_config(config).pretrain_launcher == []
    cfg = load_study_config(config, ["pretrain_launcher=[torchrun, --standalone, --nproc_per_node, '8']"])
    command = pretrain_command(cfg, "mmcl")
    assert command[:4] == ["torchrun", "--standalone", "--nproc_per_node", "8"]
    assert command[4:8] == ["-m", "clipbackdoor", "pretrain", "demo"]
    assert "name=mmcl" in command and f"output_dir={tmp_path / 'tiny-study' / 'pretrain'}" in command
    plain = pretrain_command(load_study_config(config), "mmcl")
    assert plain[:4] == [sys.executable, "-m", "clipbackdoor", "pretrain"]


def test_a_failing_pretraining_launcher_names_its_log(
    fmnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_study(tmp_path / "study.yaml", fmnist_root)
    root = tmp_path / "tiny-study"
    failing = json.dumps([sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(3)"])
    assert main(["study", str(config), f"pretrain_launcher={failing}"]) == 2
    err = capsys.readouterr().err
    assert f"pre-training mmcl failed with exit code 3; its output is in {root / 'pretrain' / 'mmcl.log'}" in err
    assert "no GPU here" in (root / "pretrain" / "mmcl.log").read_text()


# CI: test_rehearsal runs each pre-training under its torchrun launcher; test_study_seeds reads finished ones back
@pytest.mark.slow
def test_pretraining_runs_under_its_launcher_once_and_is_read_back_after(
    fmnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_study(tmp_path / "study.yaml", fmnist_root)
    root = tmp_path / "tiny-study"

    pretrain, pretrained = recording_launcher(tmp_path, "pretrain")
    clean, cleaned = recording_launcher(tmp_path, "clean")
    launchers = [f"pretrain_launcher={json.dumps(pretrain)}", f"clean_launcher={json.dumps(clean)}"]
    assert main(["study", str(config), *launchers]) == 0
    out = capsys.readouterr().out
    (run,) = launched(pretrained)
    assert run["argv"][:4] == ["-m", "clipbackdoor", "pretrain", "demo"] and "name=mmcl" in run["argv"]
    assert [r["argv"][:3] for r in launched(cleaned)] == [["-m", "clipbackdoor", "clean"]]
    assert "run directory:" in out and "run directory:" in (root / "pretrain" / "mmcl.log").read_text()  # teed
    metrics = root / "pretrain" / "mmcl" / "metrics.jsonl"
    before = metrics.read_text()
    last = [json.loads(line) for line in before.splitlines() if '"kind": "epoch"' in line][-1]
    assert f"CA {last['eval/clean_top1']:.2f} %, ASR {last['eval/asr_top1']:.2f} % after epoch 1" in out

    assert main(["study", str(config), *launchers]) == 0  # resumed: the finished run is only read back
    assert "finished earlier" in capsys.readouterr().out
    assert len(launched(pretrained)) == 1 and len(launched(cleaned)) == 1
    assert metrics.read_text() == before


def test_a_study_that_extends_another_runs_its_stanzas_and_adds_its_own(tmp_path: Path) -> None:
    parent = write_study(tmp_path / "parent.yaml", tmp_path)
    roclip = {"overrides": {"objective": {"roclip": 1.0}}, "clean": False}
    (tmp_path / "child.yaml").write_text(
        yaml.safe_dump({"name": "child", "extends": "parent", "pretrain": {"roclip": roclip}})
    )
    child, base = load_study_config(tmp_path / "child.yaml"), load_study_config(parent)
    assert child.name == "child" and list(child.pretrain) == ["mmcl", "roclip"]  # mappings gain entries
    assert child.pretrain["mmcl"] == base.pretrain["mmcl"] and child.defenses == base.defenses
    assert child.overrides == base.overrides and not child.pretrain["roclip"].clean
    # an entry given in both is the child's whole: a pre-training's objective is replaced, not summed
    swap = {"name": "swap", "extends": "parent", "pretrain": {"mmcl": {"overrides": {"objective": {"siglip": 1.0}}}}}
    (tmp_path / "swap.yaml").write_text(yaml.safe_dump(swap))
    assert load_study_config(tmp_path / "swap.yaml").pretrain["mmcl"].overrides == {"objective": {"siglip": 1.0}}
    # a local copy named like the built-in it extends reads the built-in, not itself
    (tmp_path / "study-cc3m.yaml").write_text(yaml.safe_dump({"name": "mine", "extends": "study-cc3m"}))
    assert load_study_config(tmp_path / "study-cc3m.yaml").defenses == load_study_config("study-cc3m").defenses
    # the shipped extension: every stanza of the paper's study, read from its file, and the two new axes
    extended, paper = load_study_config("study-cc3m-extended"), load_study_config("study-cc3m")
    assert {t: extended.pretrain[t] for t in paper.pretrain} == paper.pretrain and extended.defenses == paper.defenses
    assert set(extended.pretrain) - set(paper.pretrain) == {"roclip", "safeclip"} and extended.filter is not None


@pytest.mark.parametrize(
    ("child", "message"),
    [
        ({"name": "a", "extends": "b"}, r"extends 'b'.*'extends' loops back"),
        ({"name": "a", "extends": "nowhere"}, r"a\.yaml: extends 'nowhere': config 'nowhere' is neither"),
        ({"name": "a", "extends": ["b"]}, r"a\.yaml: 'extends' names one study"),
        ({"extends": "study-cc3m"}, r"a\.yaml: a study that extends 'study-cc3m' needs its own 'name'"),
        ({"name": "a", "extends": "study-cc3m", "asr_threshold": "x"}, r"a\.yaml \(extends 'study-cc3m'\).*\n.*asr"),
    ],
)
def test_a_bad_extends_names_the_file_and_the_reason(tmp_path: Path, child: dict, message: str) -> None:
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"name": "b", "extends": "a"}))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(child))
    with pytest.raises(ConfigError, match=message):
        load_study_config(tmp_path / "a.yaml")
