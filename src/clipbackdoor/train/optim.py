"""AdamW with the usual CLIP parameter groups, and the per-step warmup + cosine learning-rate schedule.

The schedule is a pure function of the optimizer step, so the only schedule state a checkpoint needs is
the step counter, and resuming cannot shift it (the reference code's schedule ran one epoch late, so
cleaning never warmed up).

A module that a hook adds to the model (deep clustering's head) and marks with
:func:`clipbackdoor.hooks.exempt_from_weight_decay` goes whole to the no-decay group.
"""

from __future__ import annotations

import math

import torch

from clipbackdoor.config import TrainConfig
from clipbackdoor.hooks import is_exempt_from_weight_decay

_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Parameters exempt from weight decay: norm layers, biases (any 1-d tensor), logit_scale and every
    parameter of a module marked by :func:`clipbackdoor.hooks.exempt_from_weight_decay`."""
    names = {n for n, p in model.named_parameters() if p.ndim < 2 or n.endswith("logit_scale")}
    for module_name, module in model.named_modules():
        if isinstance(module, _NORMS) or is_exempt_from_weight_decay(module):
            names.update(f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters())
    return names


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    exempt = no_decay_names(model)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n not in exempt]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n in exempt]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup to ``base_lr``, then cosine.

    Step 0 already gets ``base_lr / warmup_steps`` (not 0), and the last step approaches ``min_lr``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
