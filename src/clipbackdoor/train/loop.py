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

:func:`fit` reads top to bottom: :func:`build_run`, :func:`resume`, then per epoch :func:`train_epoch` (the
hooks' epoch start and one :func:`train_pass` over the data) and :func:`finish_epoch` (evaluate, record,
checkpoint).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from clipbackdoor import checkpoints as ckpt
from clipbackdoor.augment import ViewMaker
from clipbackdoor.config import ConfigError, ExperimentConfig, TrainConfig, save_config
from clipbackdoor.data import BadRowLog, GlobalBatchSampler, PairDataset, build_pair_dataset, collate_skipping_bad
from clipbackdoor.data.batching import BatchLayout, batch_layout
from clipbackdoor.data.device_decode import DeviceDecode
from clipbackdoor.data.webdataset_source import ShardPairs
from clipbackdoor.defenses import build_defense
from clipbackdoor.evaluation import build_evaluator
from clipbackdoor.evaluation.build import Evaluator
from clipbackdoor.hooks import Hook, LoopContext
from clipbackdoor.metrics_log import MetricsLog
from clipbackdoor.models import ClipBundle, create_model
from clipbackdoor.objectives import Pass, RunShape, WeightedObjective
from clipbackdoor.train.distributed import DistEnv, setup_distributed
from clipbackdoor.train.loggers import build_loggers
from clipbackdoor.train.optim import build_optimizer, lr_at, set_lr
from clipbackdoor.train.run_directory import check_same_config
from clipbackdoor.train.step import StepSettings, forward_backward

LOGIT_SCALE_MAX = math.log(100.0)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def fit(cfg: ExperimentConfig, run_dir: Path | None = None) -> list[dict[str, Any]]:
    """Train (or resume) the run ``cfg`` describes; returns one record per evaluated epoch (rank 0)."""
    run = build_run(cfg, Path(run_dir) if run_dir is not None else cfg.run_dir)
    done = resume(run)
    # records past the checkpoint are work a crash undid (a fresh start keeps none); the rest is history
    history = run.metrics.keep_through_epoch(done if done else -1) if run.env.is_main else []
    if done == 0:
        history += start_training(run)
    for epoch in range(done + 1, cfg.train.epochs + 1):
        trained = train_epoch(run, epoch)
        history += finish_epoch(run, epoch, trained)
    return history


@dataclass
class TrainData:
    """How a pass reads this rank's training pairs."""

    loader: DataLoader
    order: GlobalBatchSampler | ShardPairs  # what set_epoch reshuffles: the sampler, or a stream's own shards
    prepare: Callable[[dict[str, Any], int], dict[str, Any]]  # (loader batch, epoch) -> the step's batch
    steps: int  # optimizer steps in one pass


@dataclass
class Run:
    """What :func:`build_run` makes of a config: the model and how a step trains it, the data, the evaluator,
    the optimizer and where records and checkpoints go. ``step`` counts optimizer steps over the whole run."""

    cfg: ExperimentConfig
    env: DistEnv
    layout: BatchLayout
    bundle: ClipBundle
    step_settings: StepSettings
    data: TrainData
    bad_rows: BadRowLog  # training and evaluation rows that could not be read, counted together
    evaluator: Evaluator
    ctx: LoopContext
    extras: torch.nn.ModuleDict  # the hooks' trainable modules
    optimizer: torch.optim.Optimizer
    metrics: MetricsLog
    ckpt_dir: Path
    step: int = 0
    schedule_steps: dict[str, int] = field(default_factory=dict)  # steps taken under each pass's own schedule

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    @property
    def objective(self) -> WeightedObjective:
        return self.step_settings.objective

    @property
    def hooks(self) -> Sequence[Hook]:
        return self.step_settings.hooks

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of the run's schedule."""
        t = self.cfg.train
        return lr_at(step, t.lr, t.warmup_steps, self.data.steps * t.epochs, t.min_lr)

    @property
    def shape(self) -> RunShape:
        pairs = self.ctx.train_set
        return RunShape(self.cfg.train.epochs, len(pairs), self.layout.steps_per_epoch)

    def next_lr(self, p: Pass) -> float:
        """The rate of the next step of pass ``p``: the run's schedule, or the pass's own (whose count moves on)."""
        if p.schedule is None:
            return self.lr(self.step)
        if p.schedule.constant is not None:
            return p.schedule.constant
        done = self.schedule_steps.get(p.schedule.name, 0)
        self.schedule_steps[p.schedule.name] = done + 1
        t = self.cfg.train
        return lr_at(done, p.schedule.base_lr, t.warmup_steps, p.schedule.total_steps, t.min_lr)


def build_run(cfg: ExperimentConfig, run_dir: Path) -> Run:
    """Everything a run is made of, in an order that matters: the weights are drawn right after seeding (the
    same on every rank), the hooks are set up before the optimizer is built over the model and their modules,
    and the config is saved only when all of it worked."""
    env = setup_distributed(cfg.train.device)
    layout = batch_layout(cfg.train, env.world_size)
    if env.is_main:
        check_same_config(cfg, run_dir / "config.yaml")
    seed_everything(cfg.seed)  # identical initial weights on every rank
    bundle = create_model(cfg.model)
    model = bundle.model.to(env.device)
    normalize = bundle.normalize.to(env.device)
    objective = WeightedObjective(cfg.objective, env.rank, env.world_size).to(env.device)
    hooks = [*(build_defense(cfg.defense).hooks(bundle) if cfg.defense else []), *objective.hooks()]
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    net, ddp = _wrap_model(model, cfg.train, env, memory_format)

    bad_rows = BadRowLog(cfg.data.max_bad_rows)
    pairs, prepare = _train_pairs(cfg, env, layout, bundle, objective.views, bad_rows)
    # every rank evaluates its share of the eval set; the counts are summed (the same result on every rank)
    evaluator = build_evaluator(
        cfg, bundle.image_size, bad_rows, bundle.tokenizer, rank=env.rank, world_size=env.world_size
    )
    data = _train_data(cfg, env, layout, pairs, prepare)
    ctx = LoopContext(
        bundle, cfg.model, pairs, env.device, cfg.seed, layout.micro_batch, cfg.data.eval, cfg.eval.attack
    )
    extras, optimizer = _set_up_hooks_and_optimizer(cfg, env, ctx, hooks)
    if env.is_main:  # only now, when the run can start: a failed start leaves no config that locks the name
        save_config(cfg, run_dir / "config.yaml")
        hooks += build_loggers(cfg, run_dir)  # loggers see what rank 0 writes to metrics.jsonl
    metrics = MetricsLog(run_dir / "metrics.jsonl", [hook.on_record for hook in hooks])
    bf16 = cfg.train.precision == "bf16"
    settings = StepSettings(net, ddp, normalize, env.device, objective, tuple(hooks), memory_format, bf16)
    return Run(
        cfg=cfg,
        env=env,
        layout=layout,
        bundle=bundle,
        step_settings=settings,
        data=data,
        bad_rows=bad_rows,
        evaluator=evaluator,
        ctx=ctx,
        extras=extras,
        optimizer=optimizer,
        metrics=metrics,
        ckpt_dir=run_dir / "checkpoints",
    )


def _wrap_model(
    model: torch.nn.Module, tcfg: TrainConfig, env: DistEnv, memory_format: torch.memory_format
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model as the step runs it (in ``memory_format``, under DDP across ranks, compiled if asked) and
    the module that holds DDP's ``no_sync``: the DDP wrapper under torch.compile's (or the model)."""
    model.to(memory_format=memory_format)
    if tcfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    net: torch.nn.Module = model
    if env.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    ddp = net
    if tcfg.compile:
        net = torch.compile(net)
    return net, ddp


def _train_pairs(
    cfg: ExperimentConfig,
    env: DistEnv,
    layout: BatchLayout,
    bundle: ClipBundle,
    views: frozenset[str],
    bad_rows: BadRowLog,
) -> tuple[PairDataset | ShardPairs, Callable[[dict[str, Any], int], dict[str, Any]]]:
    """The training pairs (with the ``views`` the objective reads) and what turns a loader batch into the
    step's: decoding and augmenting on the device (``data.decode: gpu``), or nothing."""
    view_maker = ViewMaker(views, cfg.seed, cfg.augment) if views else None
    device_decode = cfg.data.decode == "gpu"
    pairs = build_pair_dataset(
        cfg.data.train, bundle.image_size, cfg.seed, bundle.tokenizer, view_maker,
        rank=env.rank, layout=layout, num_workers=cfg.data.num_workers, device_decode=device_decode,
    )  # fmt: skip
    prepare = DeviceDecode(bundle.image_size, env.device, view_maker) if device_decode else _as_loaded
    bad_rows.add(pairs.bad)
    return pairs, prepare


def _train_data(
    cfg: ExperimentConfig,
    env: DistEnv,
    layout: BatchLayout,
    pairs: PairDataset | ShardPairs,
    prepare: Callable[[dict[str, Any], int], dict[str, Any]],
) -> TrainData:
    """The loader of this rank's micro-batches: its contiguous share of each global batch."""
    streaming = isinstance(pairs, IterableDataset)  # shards split themselves over ranks and workers
    sampler = None if streaming else GlobalBatchSampler(len(pairs), layout, env.rank, cfg.seed)
    loader = DataLoader(
        pairs,
        batch_size=layout.micro_batch if streaming else 1,
        batch_sampler=sampler,
        drop_last=streaming,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_skipping_bad,
        persistent_workers=cfg.data.num_workers > 0 and not streaming,  # a stream's workers must see set_epoch
        prefetch_factor=cfg.data.prefetch_factor if cfg.data.num_workers > 0 else None,
        pin_memory=env.device.type == "cuda",
    )
    steps = len(loader) // layout.accum_steps
    if steps == 0:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} (the global batch) exceeds the training pairs")
    return TrainData(loader, sampler or pairs, prepare, steps)


def _set_up_hooks_and_optimizer(
    cfg: ExperimentConfig, env: DistEnv, ctx: LoopContext, hooks: list[Hook]
) -> tuple[torch.nn.ModuleDict, torch.optim.Optimizer]:
    """Set the hooks up, then build the optimizer over the model and the modules they add; the hooks get it
    as ``ctx.optimizer``. Returns their modules (the checkpoint's ``extras``) and the optimizer."""
    for hook in hooks:
        hook.setup(ctx)
    extras = torch.nn.ModuleDict({k: m for h in hooks for k, m in h.modules().items()}).to(env.device)
    if env.world_size > 1 and len(extras):
        raise ConfigError(f"defense {cfg.defense['name']} trains extra modules, not yet supported under torchrun")
    optimizer = ctx.optimizer = build_optimizer(torch.nn.ModuleDict({"clip": ctx.bundle.model, **extras}), cfg.train)
    return extras, optimizer


def resume(run: Run) -> int:
    """Continue from the run directory's latest checkpoint, if it holds one: weights, optimizer, the hooks'
    modules, the objective's state, the RNG state and the step count. Returns the epoch it ended (0: none)."""
    run.env.barrier()  # rank 0 has checked the run directory
    if not (run.ckpt_dir / ckpt.LATEST).is_file():
        return 0
    latest = ckpt.latest_checkpoint(run.ckpt_dir)
    ckpt.load_weights(run.model, latest["weights"])
    state = ckpt.load_state(latest["state"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.extras.load_state_dict(state.get("extras", {}))
    if "objective" in state:  # checkpoints from before terms kept state have none
        run.objective.load_state_dict(state["objective"])
    ckpt.set_rng_state(state["rng"])
    run.step = state["step"]
    run.schedule_steps = dict(state.get("schedule_steps", {}))
    return state["epoch"]


def start_training(run: Run) -> list[dict[str, Any]]:
    """A fresh run's start: evaluate the model as it was given (epoch 0, if every epoch is evaluated), then
    the hooks' ``before_training``. Returns epoch 0's record (rank 0)."""
    history: list[dict[str, Any]] = []
    if run.cfg.eval.every_epoch:
        record = {"kind": "epoch", "epoch": 0, "step": 0, **evaluate(run)}
        if run.env.is_main:
            run.metrics.append(record)
            history.append(record)
    for hook in run.hooks:
        hook.before_training(run.ctx)
    return history


@dataclass
class PassTotals:
    """What the steps of a pass over the training data add up to."""

    nonfinite: torch.Tensor  # some step's loss was not finite (a flag on the device, read when a step is logged)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # loss and its parts, summed over steps
    samples: int = 0  # pairs trained on, over all ranks

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], samples: int) -> None:
        self.nonfinite |= ~torch.isfinite(loss)
        for k, v in {"loss": loss, **parts}.items():
            self.sums[k] = self.sums.get(k, 0) + v.float()
        self.samples += samples


@dataclass
class EpochTraining:
    """An epoch's training, for its record."""

    losses: dict[str, float]  # the loss and its parts, means over the epoch's steps and the ranks
    hook_logs: dict[str, float]  # what the hooks returned at the epoch's start, and each named pass's steps and rate
    seconds: float
    samples: int
    last_lr: float  # the rate of the epoch's last step


def train_epoch(run: Run, epoch: int) -> EpochTraining:
    """The hooks' epoch start, then the objective's passes over the training data: one over all pairs unless
    the objective declares its own (SafeCLIP's risky and safe sets, each under a schedule of its own)."""
    run.data.order.set_epoch(epoch)
    run.objective.set_epoch(epoch)
    hook_logs = {k: v for hook in run.hooks for k, v in hook.on_epoch_start(epoch, run.ctx).items()}
    run.model.train()
    started = time.perf_counter()
    totals = PassTotals(torch.zeros((), dtype=torch.bool, device=run.env.device))
    steps, lr = 0, 0.0
    for number, p in enumerate(run.objective.passes(epoch, run.shape)):
        _read_pass(run.data, p, number)
        run.objective.begin_pass(p)
        taken, lr = train_pass(run, epoch, p, totals)
        steps += taken
        if p.name != Pass().name:
            hook_logs.update({f"pass/{p.name}/steps": taken, f"pass/{p.name}/lr": lr})
    _guard_finite(run, totals.nonfinite)
    for rows in run.env.all_gather(run.bad_rows.seen):  # each rank met its own bad samples: count them all
        run.bad_rows.add(rows)
    seconds = time.perf_counter() - started
    losses = run.env.mean({k: v / max(1, steps) for k, v in totals.sums.items()})
    return EpochTraining(losses, hook_logs, seconds, totals.samples, lr)


def _read_pass(data: TrainData, p: Pass, number: int) -> None:
    """Point the loader's sampler at the pass's pairs (all of them, or its subset)."""
    if isinstance(data.order, GlobalBatchSampler):
        data.order.set_subset(p.indices, number)
    elif p.indices is not None:
        raise ConfigError("a pass over a subset of the pairs needs indexed data (a CSV, or shards with access: index)")


def train_pass(run: Run, epoch: int, p: Pass, totals: PassTotals) -> tuple[int, float]:
    """One pass over the pass's pairs, adding to ``totals``: its optimizer steps, a record every ``log_every``.
    Returns (steps, the last step's rate). Raises :class:`TrainingError` when a loss was not finite."""
    steps = run.data.order.steps if isinstance(run.data.order, GlobalBatchSampler) else run.data.steps
    lr = 0.0
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch}/{run.cfg.train.epochs}" + ("" if p.name == Pass().name else f" ({p.name})"),
        disable=None if run.cfg.train.progress and run.env.is_main else True,  # None: only on a terminal
        leave=False,
        dynamic_ncols=True,
    )
    for loaded in _grouped(run.data.loader, run.layout.accum_steps, steps):
        micro_batches = [run.data.prepare(batch, epoch) for batch in loaded]
        for batch in micro_batches:
            run.bad_rows.add(batch.pop("bad_rows"))
        loss, parts = forward_backward(run.step_settings, micro_batches)
        totals.add(loss, parts, run.layout.global_batch)
        lr = optimizer_step(run, p)
        bar.update(1)
        if run.step % run.cfg.train.log_every == 0:
            _guard_finite(run, totals.nonfinite)
            logged = run.env.mean({"loss": loss, **parts})
            if run.env.is_main:
                record = _step_record(run, epoch, lr, logged)
                run.metrics.append(record if p.name == Pass().name else {**record, "pass": p.name})
                bar.set_postfix(loss=f"{logged['loss']:.3f}")
    bar.close()
    return steps, lr


def optimizer_step(run: Run, p: Pass) -> float:
    """Apply the gradients at the step's learning rate (the pass's; clipped, if asked), then keep the
    temperature in range. Returns the learning rate."""
    lr = run.next_lr(p)
    set_lr(run.optimizer, lr)
    if run.cfg.train.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        run.model.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)
    run.step += 1
    return lr


def _step_record(run: Run, epoch: int, lr: float, logged: dict[str, float]) -> dict[str, Any]:
    return {
        "kind": "step",
        "epoch": epoch,
        "step": run.step,
        "lr": lr,
        **{f"train/{k}": v for k, v in logged.items()},
        "logit_scale": float(run.model.logit_scale.detach().exp()),
    }


def finish_epoch(run: Run, epoch: int, trained: EpochTraining) -> list[dict[str, Any]]:
    """Evaluate (every epoch if asked, always after the last), append the epoch's record to metrics.jsonl and
    checkpoint (rank 0, while the others wait). Returns the record (rank 0)."""
    evaluated = evaluate(run) if run.cfg.eval.every_epoch or epoch == run.cfg.train.epochs else {}
    history: list[dict[str, Any]] = []
    if run.env.is_main:
        record = {
            "kind": "epoch",
            "epoch": epoch,
            "step": run.step,
            "lr": trained.last_lr,
            **{f"train/{k}": v for k, v in trained.losses.items()},
            **trained.hook_logs,
            **evaluated,
            "time/epoch_s": trained.seconds,
            "time/samples_per_s": trained.samples / trained.seconds,
            "data/bad_rows": run.bad_rows.count,  # read after the evaluation, which may have met more
            **run.layout.record(),
        }
        run.metrics.append(record)
        save_checkpoint(run, epoch)
        history.append(record)
    run.env.barrier()  # the others wait while rank 0 checkpoints
    return history


def evaluate(run: Run) -> dict[str, float]:
    """The evaluator's numbers, ``eval/``-prefixed; every rank must call it (its share of the eval set)."""
    return _prefixed("eval", run.evaluator(run.bundle, run.env.device))


def save_checkpoint(run: Run, epoch: int) -> None:
    """Epoch ``epoch``'s checkpoint: weights, and all that resuming needs to continue as if never stopped."""
    state = {
        "optimizer": run.optimizer.state_dict(),
        "rng": ckpt.rng_state(),
        "step": run.step,
        "extras": run.extras.state_dict(),
        "objective": run.objective.state_dict(),  # a term's own state (RoCLIP's caption pool)
        "schedule_steps": run.schedule_steps,  # where each pass's own schedule is (SafeCLIP's)
    }
    meta = {"model_name": run.bundle.name, "image_size": str(run.bundle.image_size), "run": run.cfg.name,
            **{k: str(v) for k, v in run.layout.record().items()}}  # fmt: skip
    ckpt.save_checkpoint(run.ckpt_dir, epoch, run.model, state, meta, run.cfg.train.keep_last)
    for hook in run.hooks:
        hook.on_checkpoint(epoch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def _guard_finite(run: Run, nonfinite: torch.Tensor) -> None:
    if run.env.any(nonfinite):
        where = run.ckpt_dir / ckpt.LATEST
        kept = f"the last good checkpoint is {where}" if where.is_file() else "no checkpoint was written yet"
        raise TrainingError(f"non-finite loss by step {run.step}; {kept}")
