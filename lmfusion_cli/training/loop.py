"""`run_training`: the training story, top to bottom.

build (processes, data, workload, sharding, optimiser) → maybe resume → for each step: batch,
loss, finite check on every process, step, log, maybe validate, maybe save → final checkpoint and
run manifest. SIGTERM/SIGINT finish the current step, save a checkpoint and return.

Everything a resume needs is the `TrainState` below plus the model/optimiser/RNG in the checkpoint.
This file does not know the model: `workload_factory` builds it (LMFusion by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmfusion_cli.common.atomic import atomic_write_text
from lmfusion_cli.common.configs import config_hash, config_to_dict, dump_yaml
from lmfusion_cli.common.devices import bf16_compute
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import write_manifest
from lmfusion_cli.common.output_folder import output_lock, refuse_foreign
from lmfusion_cli.training import checkpointing as ckpt
from lmfusion_cli.training.config import RESUME_FIXED_KEYS, ScheduleConfig, TrainRunConfig
from lmfusion_cli.training.distributed import (
    DistContext,
    all_reduce,
    barrier,
    broadcast_object,
    compute_context,
    init_distributed,
    shutdown,
    store_frozen_bf16_,
    unwrap,
    wrap_model,
)
from lmfusion_cli.training.loader import LatentSource, SampleStream
from lmfusion_cli.training.optim import build_lr_scheduler, build_optimizer
from lmfusion_cli.training.step import train_step
from lmfusion_cli.training.trackers import flatten
from lmfusion_cli.training.train_log import TrainLogger, memory_mb
from lmfusion_cli.training.validation import validate
from lmfusion_cli.training.workload import Workload

log = logging.getLogger(__name__)

WorkloadFactory = Callable[[TrainRunConfig, LatentSource, torch.device], Workload]
SourceFactory = Callable[[str, str], LatentSource]


class TrainingStopped(UserError):
    """The run stopped on purpose (too many non-finite steps); the message says why and what to do."""

    exit_code = 1


@dataclass
class TrainState:
    """Everything besides weights, optimiser and RNG that a resume restores."""

    step: int = 0
    data: dict[str, int] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    bad_in_row: int = 0
    skipped_steps: int = 0


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float]
    """Total loss of each step run in this call (skipped steps included, as logged)."""
    stopped_by_signal: bool
    last_checkpoint: Path | None
    skipped_steps: int
    summary: str = ""
    """One line: step, last train loss, last validation losses, wall time (printed by `lmfusion train`)."""


def run_training(
    config: TrainRunConfig, workload_factory: WorkloadFactory | None = None, source_factory: SourceFactory | None = None
) -> TrainResult:
    """Train per `config` in this process (one of several under torchrun); return what happened."""
    ctx = init_distributed(config.dist)
    try:
        refuse_foreign(config.train.out, "training-run", RUN_FOLDER_ENTRIES)  # a latent cache, shards, a file
        with _rank0_lock(config, ctx):
            return _run(config, ctx, workload_factory or _default_workload, source_factory or _default_source)
    except OSError as e:  # a full disk outside a checkpoint save (logs, run files); saves say more themselves
        if e.errno != errno.ENOSPC:
            raise
        raise UserError(
            f"No space left on the device of {config.train.out} (writing {e.filename or 'the run files'}); "
            "free space and rerun with --resume auto (complete checkpoints are kept)"
        ) from None
    finally:
        shutdown(ctx)


RUN_FOLDER_ENTRIES = ("config.yaml", "checkpoints", "logs")
"""What a run folder holds besides its manifest (`refuse_foreign` refuses any other entry)."""


@contextlib.contextmanager
def _rank0_lock(config: TrainRunConfig, ctx: DistContext):
    """Rank 0 holds the run folder's lock for the whole run; every process learns if it was refused."""
    with contextlib.ExitStack() as stack:
        problem = None
        if ctx.is_main:
            try:
                stack.enter_context(output_lock(config.train.out, "train"))
            except UserError as e:
                problem = str(e)
        problem = broadcast_object(problem, ctx)
        if problem:
            raise UserError(problem)
        yield


def _default_source(path: str, split: str) -> LatentSource:
    from lmfusion_cli.data.latents import open_latent_cache

    cache = open_latent_cache(path, splits=split)
    if len(cache) == 0:
        raise UserError(
            f"The latent cache {path} has no items in split '{split}'; pick another split with "
            "--set data.train_split=NAME / --set data.val_split=NAME (or data.val_split=null: no "
            "validation), or re-run prepare with a larger --val-fraction."
        )
    return cache


def _default_workload(config: TrainRunConfig, source: LatentSource, device: torch.device) -> Workload:
    from lmfusion_cli.training.lmfusion_workload import build_lmfusion_workload

    return build_lmfusion_workload(config, source, device)


@dataclass
class _Run:
    """The built pieces of one invocation (what `_build` returns and the step helpers share)."""

    config: TrainRunConfig
    ctx: DistContext
    run_dir: Path
    workload: Workload
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stream: SampleStream
    val_source: LatentSource | None
    state: TrainState
    resumed_from: str | None
    last_ckpt: Path | None = None
    saved_step: int = -1


def _build(
    config: TrainRunConfig, ctx: DistContext, workload_factory: WorkloadFactory, source_factory: SourceFactory
) -> _Run:
    """Processes, data, workload, sharding, optimiser — then maybe resume and write the run files."""
    run_dir = Path(config.train.out)
    _set_determinism(config)
    _check_batch(config, ctx)
    if ctx.is_main:
        from lmfusion_cli.training.trackers import check_available

        check_available(config.log.trackers())  # a missing tracker package: one sentence, nothing written
    found = ckpt.find_resume_point(run_dir, config.train.resume)
    resume_from = broadcast_object(str(found) if found else None, ctx)  # rank 0's view wins
    if resume_from:
        _refuse_newer_checkpoints(run_dir, Path(resume_from))
    source = source_factory(config.data.latents, config.data.train_split)
    val_source = source_factory(config.data.latents, config.data.val_split) if config.data.val_split else None
    torch.manual_seed(config.train.seed)  # initialisation of new modules (image experts, patcher)
    workload = workload_factory(config, source, ctx.device)
    ckpt.prepare_root(run_dir / "checkpoints", ctx)  # the first write: a base that fails to load leaves no folder
    bf16 = bf16_compute(config.train.precision, ctx.device)
    if config.train.frozen_bf16:
        if not bf16:
            raise UserError("train.frozen_bf16 needs bf16 compute; set train.precision=bf16 (or auto on a GPU).")
        store_frozen_bf16_(workload.model)
    model = wrap_model(
        workload.model,
        workload.shard_units() if config.dist.strategy == "fsdp" else [],
        config.dist.strategy,
        ctx,
        bf16=bf16,
    )
    if hasattr(workload, "load_after_sharding"):  # a meta-built model reads its shards now (issue 22)
        workload.load_after_sharding(model)
    if config.train.compile:
        _compile(workload)
    optimizer = build_optimizer(
        [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad],
        config.optim,
        getattr(workload, "text_parameter_prefix", ""),
    )
    scheduler = build_lr_scheduler(optimizer, config.optim, _schedule_to_follow(config, resume_from))
    fraction = config.data.generation_fraction
    fraction = getattr(workload, "default_generation_fraction", 0.8) if fraction is None else fraction
    stream = SampleStream(
        source,
        config.train.seed,
        fraction,
        config.data.caption_dropout,
        config.data.interleaved_fraction,
        config.data.text_only_fraction,
    )
    state = TrainState()
    if resume_from:
        state = _resume(Path(resume_from), config, model, optimizer, scheduler, stream, ctx, workload)
    if ctx.is_main:
        _write_run_files(run_dir, config, workload, state, complete=False)
    barrier(ctx)
    return _Run(
        config,
        ctx,
        run_dir,
        workload,
        model,
        [p for p in model.parameters() if p.requires_grad],
        optimizer,
        scheduler,
        stream,
        val_source,
        state,
        resume_from,
        last_ckpt=Path(resume_from) if resume_from else None,
        saved_step=state.step if resume_from else -1,
    )


def _run(
    config: TrainRunConfig, ctx: DistContext, workload_factory: WorkloadFactory, source_factory: SourceFactory
) -> TrainResult:
    run = _build(config, ctx, workload_factory, source_factory)
    state = run.state
    end = min(config.train.stop_at or config.schedule.steps, config.schedule.steps)
    log.info(
        "training %s: steps %d → %d, %d process(es), global batch %d, run folder %s",
        run.workload.describe().get("base", "?"),
        state.step,
        end,
        ctx.world_size,
        config.train.batch_size,
        run.run_dir,
    )
    started = time.perf_counter()
    logger = TrainLogger(
        run.run_dir,
        ctx.is_main,
        config.schedule.steps,
        state.step,
        config.log.tensorboard,
        report_to=config.log.trackers(),
        params=flatten(config_to_dict(config)),
        project=config.log.project,
    )
    if run.resumed_from:
        logger.write({"event": "resume", "step": state.step, "from": run.resumed_from, "world_size": ctx.world_size})
    autocast = compute_context(config.train.precision, config.dist.strategy, ctx)
    stop = _SignalFlag()
    losses: list[float] = []
    flops, flops_steps = 0.0, 0  # counted FLOPs of this process since the last record, over this many steps
    signalled = False
    run.model.train()
    if run.val_source is not None and state.step == 0:  # the untrained baseline of the validation curve
        _validate(run, logger)
    with stop.installed():
        while state.step < end:
            t0 = time.perf_counter()
            samples = run.stream.next_step(config.train.batch_size, ctx.rank, ctx.world_size)
            # log.count_flops: the first step after each record is counted (the counter slows a step down)
            with _flop_counter(config.log.count_flops and flops_steps == 0) as counter:
                result = train_step(
                    run.model,
                    run.workload,
                    run.optimizer,
                    run.params,
                    samples,
                    config.train.micro_batch_size,
                    config.optim.grad_clip,
                    autocast,
                    ctx,
                )
            flops += counter.get_total_flops() if counter is not None else 0.0
            flops_steps += 1
            lr = run.scheduler.get_last_lr()[0]
            with warnings.catch_warnings():  # a skipped step has no optimizer.step(); torch warns
                warnings.simplefilter("ignore", UserWarning)
                run.scheduler.step()  # the schedule is a clock of steps, skipped ones included
            state.step += 1
            losses.append(result.loss)
            seconds = time.perf_counter() - t0
            _count_finite(run, result, logger)
            if state.step % config.log.every == 0 or state.step == config.schedule.steps:
                logger.write(
                    {
                        "step": state.step,
                        "loss": result.loss,
                        "text_loss": result.text_loss,
                        "text_targets": result.text_targets,
                        "image_loss": result.image_loss,
                        "lr": lr,
                        "grad_norm": result.grad_norm,
                        "tokens_per_s": result.tokens / seconds,
                        "images_per_s": result.images / seconds,
                        "memory_mb": memory_mb(ctx.device),
                        "cpu_s": time.process_time(),
                        "skipped": not result.applied,
                        "skipped_total": state.skipped_steps,
                        "epoch": run.stream.epoch,
                        **_flops_record(flops, flops_steps, config, ctx),
                    }
                )
                flops, flops_steps = 0.0, 0
            logger.step_done({"loss": result.loss})
            last = state.step == end
            if run.val_source is not None and (
                last or (config.log.val_every and state.step % config.log.val_every == 0)
            ):
                _validate(run, logger)
            interrupted = stop.agreed(ctx)
            due = last or interrupted or (config.train.save_every and state.step % config.train.save_every == 0)
            if due and state.bad_in_row == 0:  # never save right after a poisoned step
                try:
                    _save(run)
                except BaseException:  # a full disk: the log file is closed before the one-line error
                    logger.close()
                    raise
            if interrupted:
                signalled = True
                log.warning(
                    "stopped by a signal at step %d; checkpoint %s; rerun with --resume auto to continue",
                    state.step,
                    run.last_ckpt.name if run.last_ckpt else "none",
                )
                break
    logger.close()
    summary = _summary(state.step, config.schedule.steps, losses, logger.last_val, time.perf_counter() - started)
    if ctx.is_main:
        log.info("%s", summary)
    finished = state.step >= config.schedule.steps
    if ctx.is_main:
        _write_run_files(run.run_dir, config, run.workload, state, complete=finished and run.saved_step == state.step)
    return TrainResult(
        run_dir=run.run_dir,
        step=state.step,
        losses=losses,
        stopped_by_signal=signalled,
        last_checkpoint=run.last_ckpt,
        skipped_steps=state.skipped_steps,
        summary=summary,
    )


def _summary(step: int, total: int, losses: list[float], last_val: dict[str, Any] | None, seconds: float) -> str:
    """`run summary: step 12/12, train loss 1.234, val_loss 1.1 (step 12), val_caption_loss …, wall 63 s`."""
    parts = [f"run summary: step {step}/{total}", f"train loss {losses[-1]:.4g}" if losses else "no step run"]
    if last_val:
        parts.append(
            ", ".join(f"{k} {v:.4g}" for k, v in last_val.items() if k in ("val_loss", "val_caption_loss"))
            + f" (step {last_val['step']})"
        )
    parts.append(f"wall {seconds:.0f} s")
    return ", ".join(parts)


def _count_finite(run: _Run, result: Any, logger: TrainLogger) -> None:
    """Count a skipped (non-finite) step, log its sample keys, stop after `max_bad_steps` in a row."""
    state = run.state
    if result.applied:
        state.bad_in_row = 0
        return
    state.bad_in_row += 1
    state.skipped_steps += 1
    logger.write(
        {
            "event": "nonfinite",
            "step": state.step,
            "keys": result.bad_keys,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
        }
    )
    log.warning(
        "step %d: non-finite loss or gradient, step skipped (samples: %s)",
        state.step,
        ", ".join(result.bad_keys) or "unknown",
    )
    if state.bad_in_row >= run.config.train.max_bad_steps:
        logger.close()
        good = run.last_ckpt.name if run.last_ckpt else "none"
        raise TrainingStopped(
            f"Stopped at step {state.step}: the loss or gradient was not finite for "
            f"{state.bad_in_row} steps in a row (last samples: {', '.join(result.bad_keys[:8]) or 'unknown'}); "
            f"the last good checkpoint is {good}: check those items or lower optim.lr, then "
            "rerun with --resume auto."
        )


def _validate(run: _Run, logger: TrainLogger) -> None:
    compute = compute_context(run.config.train.precision, run.config.dist.strategy, run.ctx)
    with compute or contextlib.nullcontext():  # bf16 runs validate in bf16 too (frozen weights may be bf16)
        values = validate(
            run.model, run.workload, run.val_source, run.config.log, run.config.train.micro_batch_size, run.ctx
        )
    logger.write({"event": "val", "step": run.state.step, **values})
    cfg = run.config.log
    # the validation grid: one process only (sampling is not sharded), for workloads that can draw
    if cfg.grid_items and logger.wants_images and run.ctx.world_size == 1 and hasattr(run.workload, "validation_grid"):
        run.model.eval()
        with compute_context(run.config.train.precision, run.config.dist.strategy, run.ctx) or contextlib.nullcontext():
            grid = run.workload.validation_grid(run.val_source, cfg.grid_items, cfg.grid_steps, cfg.val_seed)
        run.model.train()
        if grid is not None:
            logger.image("val/grid", grid, run.state.step)


def _save(run: _Run) -> None:
    run.state.data, run.state.scheduler = run.stream.state_dict(), run.scheduler.state_dict()
    run.last_ckpt = ckpt.save_checkpoint(
        run.run_dir / "checkpoints",
        run.state.step,
        run.model,
        run.optimizer,
        _trainer_state(run.state, run.config),
        run.workload,
        run.ctx,
        run.config.train.keep_last,
    )
    run.saved_step = run.state.step


def _set_determinism(config: TrainRunConfig) -> None:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


@contextlib.contextmanager
def _flop_counter(enabled: bool):
    """A `FlopCounterMode` around the step (matmuls, convolutions, attention; forward and backward),
    or None. Frozen weights get no weight-gradient matmul, so frozen-text runs count fewer FLOPs."""
    if not enabled:
        yield None
        return
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        yield counter


def _flops_record(counted: float, steps: int, config: TrainRunConfig, ctx: DistContext) -> dict[str, float]:
    """{"flops": training FLOPs of all processes over the `steps` steps since the previous record}, with
    log.count_flops: the first of those steps was counted and stands for each of them (a collective)."""
    if not config.log.count_flops:
        return {}
    return {"flops": all_reduce(torch.tensor([counted], dtype=torch.float64), ctx).item() * steps}


def _compile(workload: Workload) -> None:
    """torch.compile each FSDP unit's modules in place (whole model when there are no units)."""
    for unit in workload.shard_units() or [workload.model]:
        for module in unit if isinstance(unit, list) else [unit]:
            module.compile()


def _check_batch(config: TrainRunConfig, ctx: DistContext) -> None:
    """The global batch is kept whatever the process count: it must split into whole micro-batches."""
    per_step = config.train.micro_batch_size * ctx.world_size
    if config.train.batch_size % per_step:
        raise UserError(
            f"train.batch_size={config.train.batch_size} is not a multiple of train.micro_batch_size × processes "
            f"= {config.train.micro_batch_size} × {ctx.world_size}; change one of them so the global batch is kept."
        )


def _refuse_newer_checkpoints(run_dir: Path, resume_from: Path) -> None:
    """Resuming an older step of this run would mix two histories (and `--resume auto` would later
    pick the abandoned newer one): refuse until the newer checkpoints are moved away."""
    older = ckpt.list_checkpoints(run_dir / "checkpoints")
    newer = [
        c.path.name
        for c in older
        if c.path.resolve().parent == resume_from.resolve().parent and c.step > int(resume_from.name.split("-")[-1])
    ]
    if newer:
        raise UserError(
            f"{run_dir} has checkpoints newer than {resume_from.name} ({', '.join(newer)}); move them "
            "out of checkpoints/ to restart from that step, or train into another --out."
        )


def _trainer_state(state: TrainState, config: TrainRunConfig) -> dict[str, Any]:
    return {
        "step": state.step,
        "data": state.data,
        "scheduler": state.scheduler,
        "bad_in_row": state.bad_in_row,
        "skipped_steps": state.skipped_steps,
        "config": config_to_dict(config),
    }


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else None
    return data


def _schedule_to_follow(config: TrainRunConfig, resume_from: str | None) -> ScheduleConfig:
    """The LR schedule of this invocation: on resume, the saved run's, so a changed `schedule.steps`
    cannot make the learning rate jump (issue 16: 1.5e-5 → 1.3e-4 mid-run). Training still runs to the
    new `schedule.steps`; past the saved end the rate stays at `schedule.min_lr`."""
    if not resume_from:
        return config.schedule
    saved = _lookup(json.loads((Path(resume_from) / "trainer.json").read_text()).get("config", {}), "schedule")
    if not isinstance(saved, dict) or saved.get("steps", config.schedule.steps) == config.schedule.steps:
        return config.schedule
    log.warning(
        "schedule.steps changed from %d to %d on resume: the learning rate keeps the saved %d-step "
        "schedule (min_lr %g after step %d); start a new --out for a schedule over %d steps",
        saved["steps"],
        config.schedule.steps,
        saved["steps"],
        config.schedule.min_lr,
        saved["steps"],
        config.schedule.steps,
    )
    return dataclasses.replace(config.schedule, steps=int(saved["steps"]))


def _resume(
    folder: Path,
    config: TrainRunConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    stream: SampleStream,
    ctx: DistContext,
    workload: Workload,
) -> TrainState:
    """Restore from `folder`, refusing (one sentence) any change that would make the run differ."""
    saved = ckpt.load_checkpoint(folder, model, optimizer, ctx, workload)
    now = config_to_dict(config)
    for key in RESUME_FIXED_KEYS:
        if _lookup(saved["config"], key) != _lookup(now, key):
            raise UserError(
                f"Cannot resume from {folder}: config key '{key}' changed from "
                f"{_lookup(saved['config'], key)!r} to {_lookup(now, key)!r}; restore it or start a new --out "
                "(a resume may change only schedule.steps, log.* and the checkpoint cadence)."
            )
    try:
        stream.load_state_dict(saved["data"])
    except ValueError as e:
        raise UserError(f"Cannot resume from {folder}: {e}; use the same latent cache and seed.") from e
    scheduler.load_state_dict(saved["scheduler"])
    if saved["world_size"] != ctx.world_size:
        log.warning(
            "resuming a %d-process checkpoint on %d processes: the global batch and data order are kept",
            saved["world_size"],
            ctx.world_size,
        )
    log.info("resumed from %s at step %d", folder, saved["step"])
    return TrainState(
        step=saved["step"],
        data=saved["data"],
        scheduler=saved["scheduler"],
        bad_in_row=saved["bad_in_row"],
        skipped_steps=saved["skipped_steps"],
    )


def _write_run_files(
    run_dir: Path, config: TrainRunConfig, workload: Workload, state: TrainState, complete: bool
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
    write_manifest(
        run_dir,
        "training-run",
        complete=complete,
        config_hash=config_hash(config),
        step=state.step,
        skipped_steps=state.skipped_steps,
        trains=workload.describe(),
        checkpoints=[c.path.name for c in ckpt.list_checkpoints(run_dir / "checkpoints")],
    )


class _SignalFlag:
    """SIGTERM/SIGINT set a flag; the loop checks it between steps (all processes agree)."""

    def __init__(self) -> None:
        self.signum = 0

    @contextlib.contextmanager
    def installed(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in previous:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def agreed(self, ctx: DistContext) -> bool:
        return all_reduce(torch.tensor([float(self.signum)], dtype=torch.float64), ctx, op="max").item() > 0
