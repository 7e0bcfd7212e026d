"""The one training loop. Pre-training and cleaning are both configurations of it.

Per epoch: shuffle (seeded by (seed, epoch)), step through micro-batches, evaluate, append the epoch's
record to metrics.jsonl, checkpoint. A run directory that already holds a checkpoint is resumed from it:
the same config and seed give the same numbers on CPU whether or not the run was interrupted.

Under torchrun every rank trains on its shard of each batch (features are gathered inside the losses);
rank 0 alone evaluates, writes metrics and checkpoints, and the others wait for it.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from tqdm import tqdm

from clipbackdoor.augment import ViewMaker
from clipbackdoor.config import ConfigError, ExperimentConfig, read_yaml, save_config
from clipbackdoor.data import BadRowLog, EpochTagged, build_pair_dataset, collate_skipping_bad
from clipbackdoor.data.transforms import Normalize
from clipbackdoor.defenses import build_defense
from clipbackdoor.evaluation import build_evaluator
from clipbackdoor.models import create_model
from clipbackdoor.objectives import WeightedObjective
from clipbackdoor.train import checkpoint as ckpt
from clipbackdoor.train.distributed import DistEnv, setup_distributed
from clipbackdoor.train.hooks import LoopContext
from clipbackdoor.train.metrics import MetricsLog
from clipbackdoor.train.optim import build_optimizer, lr_at, set_lr

LOGIT_SCALE_MAX = math.log(100.0)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_same_config(cfg: ExperimentConfig, path: Path) -> None:
    """A run directory belongs to one config: resuming with another one would mix two experiments."""
    if not path.is_file():
        return
    old = ExperimentConfig.model_validate(read_yaml(path)).model_dump(mode="json")
    new = cfg.model_dump(mode="json")
    for tree in (old, new):
        tree["train"].pop("progress")  # cosmetic; may differ between the two invocations
    if old != new:
        diff = sorted(_diff_keys(old, new))
        raise ConfigError(f"{path} holds a different config (keys {diff}); use another name or output_dir")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in keys for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def encode(
    net: torch.nn.Module,
    normalize: Normalize,
    batch: dict[str, Any],
    device: torch.device,
    views: frozenset[str],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, torch.Tensor]:
    """Features of a batch and of its augmented views, in one forward pass of ``net``.

    Originals and views are concatenated along the batch, as CleanCLIP does (batch-norm statistics then
    cover both), and split afterwards. Returns L2-normalised ``image``/``text`` (+ ``image_aug``/``text_aug``),
    the temperature ``logit_scale`` = exp(learned value) and, if the model has one, ``logit_bias``.
    """
    n = len(batch["image"])
    images = torch.cat([batch["image"], batch["image_aug"]]) if "image_aug" in views else batch["image"]
    texts = torch.cat([batch["text"], batch["text_aug"]]) if "text_aug" in views else batch["text"]
    pixels = normalize(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
    out = net(pixels, texts.to(device, non_blocking=True))
    features = {"image": out[0][:n], "text": out[1][:n], "logit_scale": out[2]}
    if "image_aug" in views:
        features["image_aug"] = out[0][n:]
    if "text_aug" in views:
        features["text_aug"] = out[1][n:]
    if len(out) > 3:
        features["logit_bias"] = out[3]
    return features


def fit(cfg: ExperimentConfig, run_dir: Path | None = None) -> list[dict[str, Any]]:
    """Train (or resume) the run ``cfg`` describes; returns one record per evaluated epoch (rank 0)."""
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir
    env = setup_distributed(cfg.train.device)
    tcfg = cfg.train
    if tcfg.batch_size % tcfg.accum_steps:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} is not a multiple of train.accum_steps")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_same_config(cfg, run_dir / "config.yaml")
        save_config(cfg, run_dir / "config.yaml")

    seed_everything(cfg.seed)  # identical initial weights on every rank
    bundle = create_model(cfg.model)
    model = bundle.model.to(env.device)
    normalize = bundle.normalize.to(env.device)
    objective = WeightedObjective(cfg.objective, env.rank, env.world_size).to(env.device)
    views = objective.views
    hooks = build_defense(cfg.defense).hooks(bundle) if cfg.defense else []
    extras = torch.nn.ModuleDict({k: m for h in hooks for k, m in h.modules().items()}).to(env.device)
    if env.world_size > 1 and len(extras):
        raise ConfigError(f"defense {cfg.defense['name']} trains extra modules, not yet supported under torchrun")
    memory_format = torch.channels_last if tcfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if tcfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    net: torch.nn.Module = model
    if env.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    ddp = net  # no_sync lives on the DDP wrapper, under torch.compile's
    if tcfg.compile:
        net = torch.compile(net)

    bad_rows = BadRowLog(cfg.data.max_bad_rows)
    view_maker = ViewMaker(views, cfg.seed, cfg.augment) if views else None
    micro_batch = tcfg.batch_size // tcfg.accum_steps
    train_set = build_pair_dataset(
        cfg.data.train, bundle.image_size, cfg.seed, bundle.tokenizer, view_maker,
        rank=env.rank, world_size=env.world_size, micro_batch=micro_batch, num_workers=cfg.data.num_workers,
    )  # fmt: skip
    bad_rows.add(train_set.bad)
    evaluator = build_evaluator(cfg, bundle.image_size, bad_rows, bundle.tokenizer) if env.is_main else None

    streaming = isinstance(train_set, IterableDataset)  # shards split themselves over ranks and workers
    sampler = None
    if not streaming:
        sampler = EpochTagged(
            DistributedSampler(train_set, env.world_size, env.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        )
    loader = DataLoader(
        train_set,
        batch_size=micro_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_skipping_bad,
        persistent_workers=cfg.data.num_workers > 0 and not streaming,  # a stream's workers must see set_epoch
        prefetch_factor=cfg.data.prefetch_factor if cfg.data.num_workers > 0 else None,
        pin_memory=env.device.type == "cuda",
    )
    steps_per_epoch = len(loader) // tcfg.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={tcfg.batch_size} × {env.world_size} rank(s) exceeds the {len(train_set)} pairs"
        )
    total_steps = steps_per_epoch * tcfg.epochs
    optimizer = build_optimizer(torch.nn.ModuleDict({"clip": model, **extras}), tcfg)
    ctx = LoopContext(bundle, cfg.model, train_set, env.device, cfg.seed, micro_batch)
    for hook in hooks:
        hook.setup(ctx)

    metrics = MetricsLog(run_dir / "metrics.jsonl")
    ckpt_dir = run_dir / "checkpoints"
    start_epoch, step = 0, 0
    env.barrier()  # rank 0 has checked the run directory
    if (ckpt_dir / ckpt.LATEST).is_file():
        latest = ckpt.latest_checkpoint(ckpt_dir)
        ckpt.load_weights(model, latest["weights"])
        state = ckpt.load_state(latest["state"])
        optimizer.load_state_dict(state["optimizer"])
        extras.load_state_dict(state.get("extras", {}))
        ckpt.set_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
    history = metrics.keep_through_epoch(start_epoch if start_epoch else -1) if env.is_main else []
    meta = {"model_name": bundle.name, "image_size": str(bundle.image_size), "run": cfg.name}

    if start_epoch == 0:
        if cfg.eval.every_epoch and evaluator is not None:  # epoch 0: the model as it was given
            record = {"kind": "epoch", "epoch": 0, "step": 0, **_prefixed("eval", evaluator(bundle, env.device))}
            metrics.append(record)
            history.append(record)
        for hook in hooks:
            hook.before_training(ctx)

    bf16 = tcfg.precision == "bf16"
    for epoch in range(start_epoch + 1, tcfg.epochs + 1):
        (sampler or train_set).set_epoch(epoch)
        hook_logs = {k: v for hook in hooks for k, v in hook.on_epoch_start(epoch, ctx).items()}
        model.train()
        sums: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), dtype=torch.bool, device=env.device)
        started, samples = time.perf_counter(), 0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{tcfg.epochs}",
            disable=None if tcfg.progress and env.is_main else True,  # None: only on a terminal
            leave=False,
            dynamic_ncols=True,
        )
        for micro, batch in enumerate(loader):
            if micro // tcfg.accum_steps >= steps_per_epoch:
                break
            bad_rows.add(batch.pop("bad_rows"))
            if "image" not in batch:
                continue
            last_micro = (micro + 1) % tcfg.accum_steps == 0
            sync = nullcontext() if last_micro or env.world_size == 1 else ddp.no_sync()
            with sync, torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
                features = encode(net, normalize, batch, env.device, views, memory_format)
                loss, parts = objective(features)
                for hook in hooks:
                    extra = hook.loss(features, batch)
                    if extra:
                        loss = loss + extra["loss"]
                        parts.update({f"defense/{k}": v.detach() for k, v in extra.items()})
                (loss / tcfg.accum_steps).backward()
            nonfinite |= ~torch.isfinite(loss.detach())
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0) + v.float()
            samples += len(batch["index"]) * env.world_size
            if not last_micro:
                continue
            lr = lr_at(step, tcfg.lr, tcfg.warmup_steps, total_steps, tcfg.min_lr)
            set_lr(optimizer, lr)
            if tcfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)
            step += 1
            bar.update(1)
            if step % tcfg.log_every == 0:
                _guard_finite(env, nonfinite, step, ckpt_dir)
                logged = env.mean({"loss": loss, **parts})
                if env.is_main:
                    record = {
                        "kind": "step",
                        "epoch": epoch,
                        "step": step,
                        "lr": lr,
                        **{f"train/{k}": v for k, v in logged.items()},
                        "logit_scale": float(model.logit_scale.detach().exp()),
                    }
                    metrics.append(record)
                    bar.set_postfix(loss=f"{logged['loss']:.3f}")
        bar.close()
        _guard_finite(env, nonfinite, step, ckpt_dir)
        elapsed = time.perf_counter() - started
        n_micro = max(1, steps_per_epoch * tcfg.accum_steps)
        epoch_means = env.mean({k: v / n_micro for k, v in sums.items()})
        if env.is_main and evaluator is not None:
            record = {
                "kind": "epoch",
                "epoch": epoch,
                "step": step,
                "lr": lr_at(step - 1, tcfg.lr, tcfg.warmup_steps, total_steps, tcfg.min_lr),
                **{f"train/{k}": v for k, v in epoch_means.items()},
                **hook_logs,
            }
            if cfg.eval.every_epoch or epoch == tcfg.epochs:
                record.update(_prefixed("eval", evaluator(bundle, env.device)))
            record.update(
                {"time/epoch_s": elapsed, "time/samples_per_s": samples / elapsed, "data/bad_rows": bad_rows.count}
            )
            metrics.append(record)
            state = {
                "optimizer": optimizer.state_dict(),
                "rng": ckpt.rng_state(),
                "step": step,
                "extras": extras.state_dict(),
            }
            ckpt.save_checkpoint(ckpt_dir, epoch, model, state, meta, tcfg.keep_last)
            history.append(record)
        env.barrier()  # the others wait while rank 0 evaluates and checkpoints
    return history


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def _guard_finite(env: DistEnv, nonfinite: torch.Tensor, step: int, ckpt_dir: Path) -> None:
    if env.any(nonfinite):
        where = ckpt_dir / ckpt.LATEST
        kept = f"the last good checkpoint is {where}" if where.is_file() else "no checkpoint was written yet"
        raise TrainingError(f"non-finite loss by step {step}; {kept}")
