"""Typed experiment configs: YAML files plus command-line dot-overrides, validated before anything runs.

A config is a tree of pydantic models that forbid unknown keys, so a typo such as ``train.lrr`` fails at
load time with the key's full dotted path instead of being silently ignored hours into a run. The package
knows every schema but no component: names of triggers, losses and defenses are checked by the resolver in
``clipbackdoor.resolve`` (:class:`Resolver`), so the library can import its configs without its registries.

``base`` (strict models, errors, templates), ``sources`` (data sources), ``experiment`` (the experiment's
sections) and ``loading`` (YAML, overrides, validation) are re-exported here: import from ``clipbackdoor.config``.
"""

from clipbackdoor.config.base import (
    ConfigError,
    Strict,
    Template,
    class_index,
)
from clipbackdoor.config.experiment import (
    AugmentConfig,
    CleaningSetConfig,
    EDAConfig,
    EvalConfig,
    ExperimentConfig,
    LogConfig,
    ModelConfig,
    PatchOptimization,
    PoisonConfig,
    Resolver,
    RetrievalConfig,
    TargetConfig,
    TrainConfig,
    WandbConfig,
)
from clipbackdoor.config.loading import (
    SOURCE_TAGS,
    apply_overrides,
    builtin_config_path,
    merge_trees,
    read_config_tree,
    read_yaml,
    resolve_yaml,
    save_config,
    validate_as,
)
from clipbackdoor.config.sources import (
    CsvLabelled,
    CsvPairs,
    DataConfig,
    FashionMNISTLabelled,
    FashionMNISTPairs,
    ImageNetLabelled,
    LabelledSource,
    PairSource,
    TorchvisionLabelled,
    WebDatasetPairs,
)

__all__ = [
    "SOURCE_TAGS",
    "AugmentConfig",
    "CleaningSetConfig",
    "ConfigError",
    "CsvLabelled",
    "CsvPairs",
    "DataConfig",
    "EDAConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FashionMNISTLabelled",
    "FashionMNISTPairs",
    "ImageNetLabelled",
    "LabelledSource",
    "LogConfig",
    "ModelConfig",
    "PairSource",
    "PatchOptimization",
    "PoisonConfig",
    "Resolver",
    "RetrievalConfig",
    "Strict",
    "TargetConfig",
    "Template",
    "TorchvisionLabelled",
    "TrainConfig",
    "WandbConfig",
    "WebDatasetPairs",
    "apply_overrides",
    "builtin_config_path",
    "class_index",
    "merge_trees",
    "read_config_tree",
    "read_yaml",
    "resolve_yaml",
    "save_config",
    "validate_as",
]
