"""`run_training`: the training story, top to bottom.

build (processes, data, workload, sharding, optimiser; `build.py`) → maybe resume → for each step:
batch, loss, finite check on every process, step (`_train_step`), log (`_log_step`), maybe validate
(`_maybe_validate`), maybe save (`_maybe_save`), check signals → final checkpoint and run manifest.
SIGTERM/SIGINT finish the current step, save a checkpoint and return.

Everything a resume needs is a Stateful object (`state.py`: model, optimiser, LR scheduler, data
stream, RNG, `TrainProgress`) that the run's `Checkpointer` saves and loads. This file does not know
the model: `workload_factory` builds it (LMFusion by default).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfusion_cli.common.checkpoint_layout import CHECKPOINTS_DIR
from lmfusion_cli.common.configs import config_to_dict
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.output_folder import output_lock, refuse_foreign
from lmfusion_cli.training.build import (
    Run,
    SourceFactory,
    WorkloadFactory,
    build_run,
    default_source,
    default_workload,
    write_run_files,
)
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.distributed import (
    DistContext,
    broadcast_object,
    compute_context,
    init_distributed,
    shutdown,
)
from lmfusion_cli.training.flops import FlopMeter
from lmfusion_cli.training.signals import SignalFlag
from lmfusion_cli.training.step import StepResult, train_step
from lmfusion_cli.training.trackers import flatten
from lmfusion_cli.training.train_log import TrainLogger, memory_mb
from lmfusion_cli.training.validation import validate

log = logging.getLogger(__name__)


class TrainingStopped(UserError):
    """The run stopped on purpose (too many non-finite steps); the message says why and what to do."""

    exit_code = 1


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
            return _run(config, ctx, workload_factory or default_workload, source_factory or default_source)
    except OSError as e:  # a full disk outside a checkpoint save (logs, run files); saves say more themselves
        if e.errno != errno.ENOSPC:
            raise
        raise UserError(
            f"No space left on the device of {config.train.out} (writing {e.filename or 'the run files'}); "
            "free space and rerun with --resume auto (complete checkpoints are kept)"
        ) from None
    finally:
        shutdown(ctx)


RUN_FOLDER_ENTRIES = ("config.yaml", CHECKPOINTS_DIR, "logs")
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


def _run(
    config: TrainRunConfig, ctx: DistContext, workload_factory: WorkloadFactory, source_factory: SourceFactory
) -> TrainResult:
    """Build (and maybe resume), then per step: train, count non-finite, log, validate, save, check signals."""
    run = build_run(config, ctx, workload_factory, source_factory)
    progress = run.progress
    end = min(config.train.stop_at or config.schedule.steps, config.schedule.steps)
    log.info(
        "training %s: steps %d → %d, %d process(es), global batch %d, run folder %s",
        run.workload.describe().get("base", "?"),
        progress.step,
        end,
        ctx.world_size,
        config.train.batch_size,
        run.run_dir,
    )
    started = time.perf_counter()
    logger = _open_logger(run)
    stop, flops = SignalFlag(), FlopMeter(config.log.count_flops, ctx)
    losses: list[float] = []
    signalled = False
    run.model.train()
    if run.val_source is not None and progress.step == 0:  # the untrained baseline of the validation curve
        _validate(run, logger)
    with stop.installed():
        while progress.step < end:
            result, lr, seconds = _train_step(run, flops)
            losses.append(result.loss)
            _count_finite(run, result, logger)
            _log_step(run, logger, result, lr, seconds, flops)
            last = progress.step == end
            _maybe_validate(run, logger, last)
            interrupted = stop.agreed(ctx)
            _maybe_save(run, logger, last or interrupted)
            if interrupted:
                signalled = True
                log.warning(
                    "stopped by a signal at step %d; checkpoint %s; rerun with --resume auto to continue",
                    progress.step,
                    run.last_ckpt.name if run.last_ckpt else "none",
                )
                break
    logger.close()
    summary = _summary(progress.step, config.schedule.steps, losses, logger.last_val, time.perf_counter() - started)
    if ctx.is_main:
        log.info("%s", summary)
        finished = progress.step >= config.schedule.steps and run.saved_step == progress.step
        write_run_files(run.run_dir, config, run.workload, progress, complete=finished)
    return TrainResult(
        run_dir=run.run_dir,
        step=progress.step,
        losses=losses,
        stopped_by_signal=signalled,
        last_checkpoint=run.last_ckpt,
        skipped_steps=progress.skipped_steps,
        summary=summary,
    )


def _open_logger(run: Run) -> TrainLogger:
    config = run.config
    logger = TrainLogger(
        run.run_dir,
        run.ctx.is_main,
        config.schedule.steps,
        run.progress.step,
        config.log.tensorboard,
        report_to=config.log.trackers(),
        params=flatten(config_to_dict(config)),
        project=config.log.project,
    )
    if run.resumed_from:
        logger.write(
            {"event": "resume", "step": run.progress.step, "from": run.resumed_from, "world_size": run.ctx.world_size}
        )
    return logger


def _train_step(run: Run, flops: FlopMeter) -> tuple[StepResult, float, float]:
    """The next global batch → loss, backward, finite check on every process, optimizer and LR step.
    Returns (result, the step's learning rate, seconds)."""
    config, ctx = run.config, run.ctx
    t0 = time.perf_counter()
    samples = run.stream.next_step(config.train.batch_size, ctx.rank, ctx.world_size)
    autocast = compute_context(config.train.precision, config.dist.strategy, ctx)
    with flops.step():
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
    if run.average is not None and result.applied:
        run.average.update()
    lr = run.scheduler.get_last_lr()[0]
    with warnings.catch_warnings():  # a skipped step has no optimizer.step(); torch warns
        warnings.simplefilter("ignore", UserWarning)
        run.scheduler.step()  # the schedule is a clock of steps, skipped ones included
    run.progress.step += 1
    return result, lr, time.perf_counter() - t0


def _log_step(run: Run, logger: TrainLogger, result: StepResult, lr: float, seconds: float, flops: FlopMeter) -> None:
    """Every `log.every` steps (and the last): the step's record; then the progress bar."""
    step = run.progress.step
    if step % run.config.log.every == 0 or step == run.config.schedule.steps:
        logger.write(
            {
                "step": step,
                "loss": result.loss,
                "text_loss": result.text_loss,
                "text_targets": result.text_targets,
                "image_loss": result.image_loss,
                "lr": lr,
                "grad_norm": result.grad_norm,
                "tokens_per_s": result.tokens / seconds,
                "images_per_s": result.images / seconds,
                "memory_mb": memory_mb(run.ctx.device),
                "cpu_s": time.process_time(),
                "skipped": not result.applied,
                "skipped_total": run.progress.skipped_steps,
                "epoch": run.stream.epoch,
                **flops.record(),
            }
        )
    logger.step_done({"loss": result.loss})


def _maybe_validate(run: Run, logger: TrainLogger, last: bool) -> None:
    every = run.config.log.val_every
    if run.val_source is not None and (last or (every and run.progress.step % every == 0)):
        _validate(run, logger)


def _maybe_save(run: Run, logger: TrainLogger, now: bool) -> None:
    """Save when `now` (the last step, a signal) or at the `train.save_every` cadence — never right after
    a poisoned step (the previous checkpoint stays the last good one)."""
    every = run.config.train.save_every
    if not (now or (every and run.progress.step % every == 0)) or run.progress.bad_in_row:
        return
    try:
        run.last_ckpt = run.checkpointer.save(run.progress.step)
    except BaseException:  # a full disk: the log file is closed before the one-line error
        logger.close()
        raise
    run.saved_step = run.progress.step


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


def _count_finite(run: Run, result: Any, logger: TrainLogger) -> None:
    """Count a skipped (non-finite) step, log its sample keys, stop after `max_bad_steps` in a row."""
    state = run.progress
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


def _validate(run: Run, logger: TrainLogger) -> None:
    """Validation loss (and the grid) of the weights a checkpoint's `model/` would hold: the average with
    `train.ema`."""
    with run.average.applied() if run.average is not None else contextlib.nullcontext():
        _validate_now(run, logger)


def _validate_now(run: Run, logger: TrainLogger) -> None:
    compute = compute_context(run.config.train.precision, run.config.dist.strategy, run.ctx)
    with compute or contextlib.nullcontext():  # bf16 runs validate in bf16 too (frozen weights may be bf16)
        values = validate(
            run.model, run.workload, run.val_source, run.config.log, run.config.train.micro_batch_size, run.ctx
        )
    logger.write({"event": "val", "step": run.progress.step, **values})
    cfg = run.config.log
    # the validation grid: one process only (sampling is not sharded), for workloads that can draw
    if cfg.grid_items and logger.wants_images and run.ctx.world_size == 1 and hasattr(run.workload, "validation_grid"):
        run.model.eval()
        with compute_context(run.config.train.precision, run.config.dist.strategy, run.ctx) or contextlib.nullcontext():
            grid = run.workload.validation_grid(run.val_source, cfg.grid_items, cfg.grid_steps, cfg.val_seed)
        run.model.train()
        if grid is not None:
            logger.image("val/grid", grid, run.progress.step)
