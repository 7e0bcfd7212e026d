"""The loss registry: each objective is a class in its own module, registered under the name configs use.

An objective maps a dict of features (``image``, ``text``, ``logit_scale``, maybe ``logit_bias`` and, when
it lists them in ``views``, augmented views ``image_aug`` / ``text_aug``) to a dict of named tensors whose
``"loss"`` entry is the term that gets weighted; other entries are logged to metrics.jsonl as they are.

Configs name terms with a weight, or a mapping of the weight and the term's own parameters:
``objective: {mmcl: 1.0, ssl: {weight: 1.0, image: 1.0, text: 0.5}}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from clipbackdoor.augment import IMAGE_VIEWS, TEXT_VIEWS, ViewPolicy
from clipbackdoor.registry import Registry

Features = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule of a pass's own, computed by the loop: a linear warm-up to ``base_lr`` over the
    run's ``train.warmup_steps``, then cosine to ``train.min_lr`` at ``total_steps``; or ``constant`` (the rate
    of every step). Its steps are counted from 0 under ``name``, across epochs, in the run's checkpoints."""

    name: str
    base_lr: float = 0.0
    total_steps: int = 0
    constant: float | None = None


@dataclass(frozen=True)
class Pass:
    """One pass over the training pairs within an epoch: all of them (``indices`` None) or a subset by dataset
    index, under the run's schedule (``schedule`` None) or one of its own. ``mode`` tells the objective which of
    its losses this pass trains (:meth:`Objective.begin_pass`)."""

    name: str = "all"
    indices: np.ndarray | None = None
    schedule: Schedule | None = None
    mode: str = ""


@dataclass(frozen=True)
class RunShape:
    """What an objective needs of the run to declare its passes: its epochs and how many optimizer steps an
    epoch over ``n`` pairs takes (whole global batches)."""

    epochs: int
    pairs: int
    steps_for: Callable[[int], int]


class Objective(torch.nn.Module):
    """Base class: subclasses take their parameters as keyword arguments and implement ``forward``."""

    # Model settings the objective needs unless the config sets them (e.g. SigLIP's logit bias).
    model_defaults: ClassVar[dict[str, float]] = {}
    # How its reference code makes the views it reads (None: it reads none).
    view_policy: ClassVar[ViewPolicy | None] = None

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    @property
    def views(self) -> frozenset[str]:
        """Augmented inputs this term reads; the data pipeline makes only the views some term needs."""
        return frozenset()

    @property
    def reads_originals(self) -> bool:
        """Whether this term reads ``image``/``text``; when no term does, only the views are encoded."""
        return True

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch (epochs count from 1), for terms that change over training."""

    def after_step(self, features: Features) -> None:
        """Called once per optimizer step, after the gradients, with the whole step's (detached) features:
        where a term updates its own state (a memory bank), so that every micro-batch pass saw the same."""

    def hooks(self) -> list[Any]:
        """Loop hooks the term needs (``hooks.py``): work at an epoch's start that needs the model and
        the data, such as SafeCLIP's split of safe from risky pairs."""
        return []

    def passes(self, epoch: int, shape: RunShape) -> list[Pass] | None:
        """The passes of ``epoch`` (asked after the hooks' epoch start), or None: one pass over all pairs under
        the run's schedule. SafeCLIP trains its risky and safe sets in two passes with schedules of their own."""
        return None

    def begin_pass(self, p: Pass) -> None:
        """Called before each pass's first step: where a term picks the losses of ``p.mode``."""

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        raise NotImplementedError


OBJECTIVES: Registry[Objective] = Registry("objective")
register = OBJECTIVES.register


def split_term(name: str, spec: float | dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(weight, parameters) of one config entry; errors name ``objective.<name>.<key>``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(OBJECTIVES)}")
    if not isinstance(spec, dict):
        return float(spec), {}
    params = dict(spec)
    if "weight" not in params:
        raise ValueError(f"objective.{name}: a mapping needs a 'weight'")
    weight = float(params.pop("weight"))
    accepted = set(inspect.signature(OBJECTIVES[name].__init__).parameters) - {"self", "rank", "world_size"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"objective.{name}.{unknown[0]}: unknown parameter; {name} takes {sorted(accepted)}")
    return weight, params


@dataclass(frozen=True)
class ObjectiveCost:
    """What one training pair costs under an objective, read off what its terms encode (``views``,
    ``reads_originals``) rather than off its name: encoder passes on the device, and the augmented views the
    loader must make. RoCLIP encodes only its two views (CLIP's compute) yet augments them in the loader;
    SafeCLIP encodes originals and views (MMCL+SSL's compute) and augments as MMCL+SSL does."""

    image_passes: int  # image-encoder forward passes per pair and step
    text_passes: int
    augmented: frozenset[str]  # the views the loader makes (image_aug: an augmented image; text_aug: EDA)
    image_policy: str | None = None  # how the loader augments images (AutoAugment, SimCLR's), if it does


def view_policy(terms: dict[str, Any]) -> ViewPolicy:
    """The one way the configured terms' views are made: their reference codes' (AutoAugment and fresh captions
    when no term says)."""
    policies = {OBJECTIVES[name].view_policy for name in terms} - {None}
    if len(policies) > 1:
        raise ValueError(
            f"objective: {sorted(terms)} make their views differently ({sorted(map(str, policies))}); "
            "set augment.image and augment.fixed_captions"
        )
    return policies.pop() if policies else ViewPolicy()


class WeightedObjective(torch.nn.Module):
    """``Σ weight_k · loss_k`` over the configured objectives, returning every part for logging."""

    def __init__(self, terms: dict[str, float | dict[str, Any]], rank: int = 0, world_size: int = 1):
        super().__init__()
        self.weights: dict[str, float] = {}
        modules = {}
        for name, spec in terms.items():
            weight, params = split_term(name, spec)
            if weight != 0:
                self.weights[name] = weight
                modules[name] = OBJECTIVES[name](rank, world_size, **params)
        self.terms = torch.nn.ModuleDict(modules)

    @property
    def views(self) -> frozenset[str]:
        return frozenset().union(*(t.views for t in self.terms.values()))

    @property
    def reads_originals(self) -> bool:
        return any(t.reads_originals for t in self.terms.values())

    def cost(self) -> ObjectiveCost:
        """Passes as ``train.step.encode`` makes them: originals (if a term reads them) and, concatenated,
        each view some term reads; without originals, the two views alone."""
        views, originals = self.views, self.reads_originals
        return ObjectiveCost(
            image_passes=int(originals) + len(views & set(IMAGE_VIEWS)),
            text_passes=int(originals) + len(views & set(TEXT_VIEWS)),
            augmented=views,
            image_policy=view_policy(dict(self.weights)).image if views & set(IMAGE_VIEWS) else None,
        )

    def set_epoch(self, epoch: int) -> None:
        for term in self.terms.values():
            term.set_epoch(epoch)

    def after_step(self, features: Features) -> None:
        for term in self.terms.values():
            term.after_step(features)

    def hooks(self) -> list[Any]:
        return [hook for term in self.terms.values() for hook in term.hooks()]

    def passes(self, epoch: int, shape: RunShape) -> list[Pass]:
        """The epoch's passes: one term's own, or one pass over all pairs under the run's schedule."""
        declared = {name: p for name, term in self.terms.items() if (p := term.passes(epoch, shape)) is not None}
        if len(declared) > 1:
            raise ValueError(f"objective: {sorted(declared)} each declare passes of their own; combine at most one")
        return next(iter(declared.values()), [Pass()])

    def begin_pass(self, p: Pass) -> None:
        for term in self.terms.values():
            term.begin_pass(p)

    def forward(self, features: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros((), device=features["logit_scale"].device)
        parts: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            out = term(features)
            total = total + self.weights[name] * out["loss"]
            parts[name] = out["loss"].detach()
            parts.update({f"{name}/{k}": v.detach() for k, v in out.items() if k != "loss"})
        return total, parts
