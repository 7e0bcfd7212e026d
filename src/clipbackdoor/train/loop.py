"""The one training loop. Pre-training and cleaning are both configurations of it.

Per epoch: shuffle (seeded by (seed, epoch)), step through micro-batches, evaluate, append the epoch's
record to metrics.jsonl, checkpoint. A run directory that already holds a checkpoint is resumed from it:
the same config and seed give the same numbers on CPU whether or not the run was interrupted.

``train.batch_size`` is the global batch (see :mod:`clipbackdoor.data.batching`): under torchrun every rank
trains on its contiguous share of each global batch (features are gathered inside the losses), in
micro-batches accumulated exactly (:mod:`clipbackdoor.train.step`). Every rank evaluates its share of the
eval set; rank 0 writes metrics and checkpoints.

BatchNorm running statistics (used only in evaluation) follow DDP's rule: rank 0's buffers are broadcast at
every forward. They are the only state in which a run on N ranks and one on 1 process may differ.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.augment import ViewMaker
from clipbackdoor.config import ConfigError, ExperimentConfig, read_yaml, save_config
from clipbackdoor.data import BadRowLog, GlobalBatchSampler, build_pair_dataset, collate_skipping_bad
from clipbackdoor.data.batching import batch_layout
from clipbackdoor.data.device_decode import DeviceDecode
from clipbackdoor.defenses import build_defense
from clipbackdoor.evaluation import build_evaluator
from clipbackdoor.hooks import LoopContext
from clipbackdoor.metrics_log import MetricsLog
from clipbackdoor.models import create_model
from clipbackdoor.objectives import WeightedObjective
from clipbackdoor.train.distributed import DistEnv, setup_distributed
from clipbackdoor.train.loggers import build_loggers
from clipbackdoor.train.optim import build_optimizer, lr_at, set_lr
from clipbackdoor.train.step import forward_backward

LOGIT_SCALE_MAX = math.log(100.0)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_same_config(cfg: ExperimentConfig, path: Path) -> None:
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


def fit(cfg: ExperimentConfig, run_dir: Path | None = None) -> list[dict[str, Any]]:
    """Train (or resume) the run ``cfg`` describes; returns one record per evaluated epoch (rank 0)."""
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir
    env = setup_distributed(cfg.train.device)
    tcfg = cfg.train
    layout = batch_layout(tcfg, env.world_size)
    if env.is_main:
        check_same_config(cfg, run_dir / "config.yaml")

    seed_everything(cfg.seed)  # identical initial weights on every rank
    bundle = create_model(cfg.model)
    model = bundle.model.to(env.device)
    normalize = bundle.normalize.to(env.device)
    objective = WeightedObjective(cfg.objective, env.rank, env.world_size).to(env.device)
    views = objective.views
    hooks = [*(build_defense(cfg.defense).hooks(bundle) if cfg.defense else []), *objective.hooks()]
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
    device_decode = cfg.data.decode == "gpu"
    train_set = build_pair_dataset(
        cfg.data.train, bundle.image_size, cfg.seed, bundle.tokenizer, view_maker,
        rank=env.rank, layout=layout, num_workers=cfg.data.num_workers, device_decode=device_decode,
    )  # fmt: skip
    prepare = DeviceDecode(bundle.image_size, env.device, view_maker) if device_decode else _as_loaded
    bad_rows.add(train_set.bad)
    # every rank evaluates its share of the eval set; the counts are summed (the same result on every rank)
    evaluator = build_evaluator(
        cfg, bundle.image_size, bad_rows, bundle.tokenizer, rank=env.rank, world_size=env.world_size
    )

    streaming = isinstance(train_set, IterableDataset)  # shards split themselves over ranks and workers
    sampler = None if streaming else GlobalBatchSampler(len(train_set), layout, env.rank, cfg.seed)
    loader = DataLoader(
        train_set,
        batch_size=layout.micro_batch if streaming else 1,
        batch_sampler=sampler,
        drop_last=streaming,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_skipping_bad,
        persistent_workers=cfg.data.num_workers > 0 and not streaming,  # a stream's workers must see set_epoch
        prefetch_factor=cfg.data.prefetch_factor if cfg.data.num_workers > 0 else None,
        pin_memory=env.device.type == "cuda",
    )
    steps_per_epoch = len(loader) // layout.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} (the global batch) exceeds the training pairs")
    total_steps = steps_per_epoch * tcfg.epochs
    ctx = LoopContext(bundle, cfg.model, train_set, env.device, cfg.seed, layout.micro_batch, cfg.data.eval)
    for hook in hooks:
        hook.setup(ctx)
    extras = torch.nn.ModuleDict({k: m for h in hooks for k, m in h.modules().items()}).to(env.device)
    if env.world_size > 1 and len(extras):
        raise ConfigError(f"defense {cfg.defense['name']} trains extra modules, not yet supported under torchrun")
    optimizer = ctx.optimizer = build_optimizer(torch.nn.ModuleDict({"clip": model, **extras}), tcfg)
    if env.is_main:  # only now, when the run can start: a failed start leaves no config that locks the name
        save_config(cfg, run_dir / "config.yaml")

    if env.is_main:  # loggers see what rank 0 writes to metrics.jsonl
        hooks += build_loggers(cfg, run_dir)
    metrics = MetricsLog(run_dir / "metrics.jsonl", [hook.on_record for hook in hooks])
    ckpt_dir = run_dir / "checkpoints"
    start_epoch, step = 0, 0
    env.barrier()  # rank 0 has checked the run directory
    if (ckpt_dir / ckpt.LATEST).is_file():
        latest = ckpt.latest_checkpoint(ckpt_dir)
        ckpt.load_weights(model, latest["weights"])
        state = ckpt.load_state(latest["state"])
        optimizer.load_state_dict(state["optimizer"])
        extras.load_state_dict(state.get("extras", {}))
        if "objective" in state:  # checkpoints from before terms kept state have none
            objective.load_state_dict(state["objective"])
        ckpt.set_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
    history = metrics.keep_through_epoch(start_epoch if start_epoch else -1) if env.is_main else []
    meta = {"model_name": bundle.name, "image_size": str(bundle.image_size), "run": cfg.name,
            **{k: str(v) for k, v in layout.record().items()}}  # fmt: skip

    if start_epoch == 0:
        if cfg.eval.every_epoch:  # epoch 0: the model as it was given
            record = {"kind": "epoch", "epoch": 0, "step": 0, **_prefixed("eval", evaluator(bundle, env.device))}
            if env.is_main:
                metrics.append(record)
                history.append(record)
        for hook in hooks:
            hook.before_training(ctx)

    bf16 = tcfg.precision == "bf16"
    for epoch in range(start_epoch + 1, tcfg.epochs + 1):
        (sampler or train_set).set_epoch(epoch)
        objective.set_epoch(epoch)
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
        for micro_batches in _grouped(loader, layout.accum_steps, steps_per_epoch):
            micro_batches = [prepare(batch, epoch) for batch in micro_batches]
            for batch in micro_batches:
                bad_rows.add(batch.pop("bad_rows"))
            loss, parts = forward_backward(
                net, ddp, normalize, micro_batches, env.device, objective, hooks, memory_format, bf16
            )
            nonfinite |= ~torch.isfinite(loss)
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0) + v.float()
            samples += layout.global_batch
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
        for rows in env.all_gather(bad_rows.seen):  # each rank met its own bad samples: count them all
            bad_rows.add(rows)
        elapsed = time.perf_counter() - started
        epoch_means = env.mean({k: v / max(1, steps_per_epoch) for k, v in sums.items()})
        evaluated = (
            _prefixed("eval", evaluator(bundle, env.device)) if cfg.eval.every_epoch or epoch == tcfg.epochs else {}
        )
        if env.is_main:
            record = {
                "kind": "epoch",
                "epoch": epoch,
                "step": step,
                "lr": lr_at(step - 1, tcfg.lr, tcfg.warmup_steps, total_steps, tcfg.min_lr),
                **{f"train/{k}": v for k, v in epoch_means.items()},
                **hook_logs,
            }
            record.update(evaluated)
            record.update(
                {"time/epoch_s": elapsed, "time/samples_per_s": samples / elapsed, "data/bad_rows": bad_rows.count}
            )
            record.update(layout.record())
            metrics.append(record)
            state = {
                "optimizer": optimizer.state_dict(),
                "rng": ckpt.rng_state(),
                "step": step,
                "extras": extras.state_dict(),
                "objective": objective.state_dict(),  # a term's own state (RoCLIP's caption pool)
            }
            ckpt.save_checkpoint(ckpt_dir, epoch, model, state, meta, tcfg.keep_last)
            for hook in hooks:
                hook.on_checkpoint(epoch)
            history.append(record)
        env.barrier()  # the others wait while rank 0 checkpoints
    return history


def _grouped(loader: DataLoader, k: int, steps: int) -> Iterator[list[dict[str, Any]]]:
    """The loader's micro-batches, ``k`` at a time: one optimizer step each, ``steps`` in all."""
    group: list[dict[str, Any]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []
            steps -= 1
            if steps == 0:
                return


def _as_loaded(batch: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The loader's batch as it is (``data.decode: cpu``: the workers decoded and augmented it)."""
    return batch


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def _guard_finite(env: DistEnv, nonfinite: torch.Tensor, step: int, ckpt_dir: Path) -> None:
    if env.any(nonfinite):
        where = ckpt_dir / ckpt.LATEST
        kept = f"the last good checkpoint is {where}" if where.is_file() else "no checkpoint was written yet"
        raise TrainingError(f"non-finite loss by step {step}; {kept}")
