from pathlib import Path

import pytest

from clipbackdoor.config import ConfigError, CsvPairs, FashionMNISTPairs, apply_overrides
from clipbackdoor.resolve import load_config


def test_builtin_demo_config_loads() -> None:
    cfg = load_config("demo")
    assert cfg.model.name == "tiny-rn"
    assert cfg.objective == {"mmcl": 1.0}


def test_overrides_set_nested_values_with_yaml_types() -> None:
    cfg = load_config("demo", ["train.lr=1e-4", "train.epochs=7", "train.betas=[0.8, 0.9]", "train.progress=false"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.epochs == 7
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.train.progress is False


def test_override_replaces_a_whole_section() -> None:
    cfg = load_config("demo", ["data.train={source: csv, path: /x/train.csv}"])
    assert isinstance(cfg.data.train, CsvPairs)
    assert cfg.data.train.path == "/x/train.csv"
    cfg = load_config("demo", ["data.train={source: fashion-mnist, max_samples: 10}"])
    assert isinstance(cfg.data.train, FashionMNISTPairs) and cfg.data.train.max_samples == 10
    # Switching only the source keeps the old source's keys, which the new one rejects by name.
    with pytest.raises(ConfigError, match=r"data\.train\.path"):
        load_config("demo", ["data.train.source=fashion-mnist"])


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        load_config("demo", ["train.lrr=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nmae: RN50\n")
    with pytest.raises(ConfigError, match=r"model\.nmae") as err:
        load_config(bad)
    assert str(bad) in str(err.value)


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config("demo", ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config("demo", ["train.precision=fp8"])


def test_unknown_objective_and_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"objective.*unknown loss"):
        load_config("demo", ["objective={mmcl: 1.0, nope: 2.0}"])
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config("demo", ["train.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"train": 3}, ["train.lr=1"])


def test_missing_config_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a file nor a built-in"):
        load_config("no-such-config")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_an_escaped_dot_is_part_of_the_key() -> None:
    tree = apply_overrides({}, ["space.train\\.lr.grid=[1, 2]", "a.b=3"])
    assert tree == {"space": {"train.lr": {"grid": [1, 2]}}, "a": {"b": 3}}


def test_configs_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("demo", [f"name=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_every_shipped_config_validates() -> None:
    from clipbackdoor.config import builtin_config_path
    from clipbackdoor.study.config import load_study_config, sweep_configs
    from clipbackdoor.sweep.trials import budget

    folder = builtin_config_path("demo").parent
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert {
        "demo",
        "cc3m",
        "cc6m",
        "study-demo",
        "study-fmnist",
        "study-cc3m",
        "study-cc3m-extended",
        "study-cc6m",
        "study-attacks",
        "study-attacks-cc3m",
    } <= set(names)
    for name in names:
        if name.startswith("study-"):
            study = load_study_config(name)
            assert all(budget(s) >= 1 for s in sweep_configs(study))
            load_config(study.base)
        else:
            load_config(name)


def test_numbers_without_a_dot_are_numbers_in_files_and_overrides(tmp_path) -> None:
    """YAML 1.1 reads 5e-6 as a string; a learning rate typed that way, or serialised so by a study, must not be."""
    from clipbackdoor.sweep.space import as_overrides

    cfg = load_config("demo", ["objective={safeclip: {weight: 1, filter_lr: 5e-6, in_lr: 1e-3}}", "train.lr=2e-4"])
    assert cfg.objective["safeclip"]["filter_lr"] == 5e-6 and cfg.objective["safeclip"]["in_lr"] == 1e-3
    again = load_config("demo", as_overrides({"objective": {"safeclip": {"weight": 1.0, "filter_lr": 5e-06}}}))
    assert isinstance(again.objective["safeclip"]["filter_lr"], float)
    (tmp_path / "run.yaml").write_text("objective: {roclip: {weight: 1, pool_size: 1e3}}\nname: v1e3\n")
    from_file = load_config(tmp_path / "run.yaml")
    assert from_file.objective["roclip"]["pool_size"] == 1000 and from_file.name == "v1e3"


def test_a_run_saved_before_a_parameter_existed_is_the_same_config(tmp_path: Path) -> None:
    from clipbackdoor.config import save_config
    from clipbackdoor.train.run_directory import check_same_config

    cfg = load_config("demo")
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "overflow: clip" in text
    (tmp_path / "config.yaml").write_text(text.replace("overflow: clip", ""))  # as written before it existed
    check_same_config(cfg, tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"keys \['poison.trigger.overflow'\]"):
        check_same_config(load_config("demo", ["poison.trigger.overflow=wrap"]), tmp_path / "config.yaml")
