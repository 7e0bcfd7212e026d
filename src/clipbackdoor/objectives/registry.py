"""The loss registry: each objective is a class in its own module, registered under the name configs use.

An objective maps a dict of features (``image``, ``text``, ``logit_scale`` and, when it asks for them in
``views``, augmented views such as ``image_aug``) to a dict of named tensors whose ``"loss"`` entry is
the term that gets weighted; other entries are logged to metrics.jsonl as they are.
"""

from __future__ import annotations

from typing import ClassVar

import torch

Features = dict[str, torch.Tensor]


class Objective(torch.nn.Module):
    """Base class: subclasses set ``views`` (extra inputs they need) and implement ``forward``."""

    views: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        raise NotImplementedError


OBJECTIVES: dict[str, type[Objective]] = {}


def register(name: str):
    """Class decorator: make an objective available to configs as ``objective: {name: weight}``."""

    def add(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} registered twice")
        OBJECTIVES[name] = cls
        return cls

    return add


class WeightedObjective(torch.nn.Module):
    """``Σ weight_k · loss_k`` over the configured objectives, returning every part for logging."""

    def __init__(self, weights: dict[str, float], rank: int = 0, world_size: int = 1):
        super().__init__()
        unknown = sorted(set(weights) - set(OBJECTIVES))
        if unknown:
            raise KeyError(f"unknown objective(s) {unknown}; known: {sorted(OBJECTIVES)}")
        self.weights = dict(weights)
        self.terms = torch.nn.ModuleDict({k: OBJECTIVES[k](rank, world_size) for k in weights})

    @property
    def views(self) -> frozenset[str]:
        """Every extra view some active term needs: the data pipeline builds only these."""
        return frozenset().union(*(t.views for k, t in self.terms.items() if self.weights[k] != 0))

    def forward(self, features: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros((), device=features["image"].device)
        parts: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            if self.weights[name] == 0:
                continue
            out = term(features)
            total = total + self.weights[name] * out["loss"]
            parts[name] = out["loss"].detach()
            parts.update({f"{name}/{k}": v.detach() for k, v in out.items() if k != "loss"})
        return total, parts
