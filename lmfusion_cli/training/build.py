"""Build one training invocation: processes' settings, data, workload, sharding, optimiser, the
Stateful objects and their `Checkpointer` — then maybe resume, and write the run files.

`build_run` returns a `Run`, the pieces `loop.py`'s step helpers share. This file does not know the
model: `workload_factory` builds it (LMFusion by default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmfusion_cli.common.atomic import atomic_write_text
from lmfusion_cli.common.checkpoint_layout import checkpoints_root, list_checkpoints
from lmfusion_cli.common.configs import config_hash, config_to_dict, dump_yaml
from lmfusion_cli.common.devices import bf16_compute
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import write_manifest
from lmfusion_cli.training.checkpointing import Checkpointer, prepare_root
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    store_frozen_bf16_,
    unwrap,
    wrap_model,
)
from lmfusion_cli.training.loader import LatentSource, SampleStream
from lmfusion_cli.training.optim import build_lr_scheduler, build_optimizer
from lmfusion_cli.training.resume import find_resume_point, refuse_newer_checkpoints, schedule_to_follow
from lmfusion_cli.training.state import TrainProgress, WeightAverage, train_states
from lmfusion_cli.training.workload import Workload

log = logging.getLogger(__name__)

WorkloadFactory = Callable[[TrainRunConfig, LatentSource, torch.device], Workload]
SourceFactory = Callable[[str, str], LatentSource]


@dataclass
class Run:
    """The built pieces of one invocation (what `build_run` returns and the step helpers share)."""

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
    progress: TrainProgress
    checkpointer: Checkpointer
    resumed_from: str | None
    average: WeightAverage | None = None
    last_ckpt: Path | None = None
    saved_step: int = -1


def build_run(
    config: TrainRunConfig, ctx: DistContext, workload_factory: WorkloadFactory, source_factory: SourceFactory
) -> Run:
    """Processes, data, workload, sharding, optimiser — then maybe resume and write the run files."""
    run_dir = Path(config.train.out)
    _set_determinism(config)
    _check_batch(config, ctx)
    if ctx.is_main:
        from lmfusion_cli.training.trackers import check_available

        check_available(config.log.trackers())  # a missing tracker package: one sentence, nothing written
    found = find_resume_point(run_dir, config.train.resume)
    resume_from = broadcast_object(str(found) if found else None, ctx)  # rank 0's view wins
    if resume_from:
        refuse_newer_checkpoints(run_dir, Path(resume_from))
    source = source_factory(config.data.latents, config.data.train_split)
    val_source = source_factory(config.data.latents, config.data.val_split) if config.data.val_split else None
    torch.manual_seed(config.train.seed)  # initialisation of new modules (image experts, patcher)
    workload = workload_factory(config, source, ctx.device)
    model = _shard(config, ctx, workload)
    if config.train.init_from and not resume_from:
        _init_from(config.train.init_from, workload, model)
    optimizer = build_optimizer(
        [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad],
        config.optim,
        getattr(workload, "text_parameter_prefix", ""),
    )
    scheduler = build_lr_scheduler(optimizer, config.optim, schedule_to_follow(config, resume_from))
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
    progress = TrainProgress()
    average = WeightAverage(model, config.train.ema) if config.train.ema else None
    checkpointer = Checkpointer(
        checkpoints_root(run_dir),
        train_states(model, optimizer, scheduler, stream, progress, average),
        ctx,
        workload,
        config_to_dict(config),
        config.train.keep_last,
    )
    if resume_from:
        _resume(checkpointer, Path(resume_from), ctx)
    # the first write: a base that fails to load, an option refused or a refused resume leaves no folder
    prepare_root(checkpoints_root(run_dir), ctx)
    if ctx.is_main:
        write_run_files(run_dir, config, workload, progress, complete=False)
    barrier(ctx)
    return Run(
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
        progress,
        checkpointer,
        resume_from,
        average=average,
        last_ckpt=Path(resume_from) if resume_from else None,
        saved_step=progress.step if resume_from else -1,
    )


def _shard(config: TrainRunConfig, ctx: DistContext, workload: Workload) -> torch.nn.Module:
    """The workload's model in bf16/fp32, wrapped for the process layout (FSDP units, DDP), maybe compiled."""
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
    return model


def _init_from(path: str, workload: Workload, model: torch.nn.Module) -> None:
    """`train.init_from`: the workload copies an earlier run's trainable weights into the (wrapped) model."""
    init = getattr(workload, "init_from", None)
    if init is None:
        raise UserError(f"train.init_from is not supported by the {type(workload).__name__} workload; leave it unset.")
    log.info("initialised the trainable weights from %s", init(model, path))


def _resume(checkpointer: Checkpointer, folder: Path, ctx: DistContext) -> None:
    """Restore every Stateful object from `folder` (the checkpointer refuses, in one sentence, any change
    that would make the run differ)."""
    record = checkpointer.load(folder)
    if record["world_size"] != ctx.world_size:
        log.warning(
            "resuming a %d-process checkpoint on %d processes: the global batch and data order are kept",
            record["world_size"],
            ctx.world_size,
        )
    log.info("resumed from %s at step %d", folder, record["step"])


def default_source(path: str, split: str) -> LatentSource:
    from lmfusion_cli.data.latents import open_latent_cache

    cache = open_latent_cache(path, splits=split)
    if len(cache) == 0:
        raise UserError(
            f"The latent cache {path} has no items in split '{split}'; pick another split with "
            "--set data.train_split=NAME / --set data.val_split=NAME (or data.val_split=null: no "
            "validation), or re-run prepare with a larger --val-fraction."
        )
    return cache


def default_workload(config: TrainRunConfig, source: LatentSource, device: torch.device) -> Workload:
    from lmfusion_cli.training.lmfusion_workload import build_lmfusion_workload

    return build_lmfusion_workload(config, source, device)


def _set_determinism(config: TrainRunConfig) -> None:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


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


def write_run_files(
    run_dir: Path, config: TrainRunConfig, workload: Workload, progress: TrainProgress, complete: bool
) -> None:
    """The run's config.yaml and manifest (complete once the last step is saved)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
    write_manifest(
        run_dir,
        "training-run",
        complete=complete,
        config_hash=config_hash(config),
        step=progress.step,
        skipped_steps=progress.skipped_steps,
        trains=workload.describe(),
        checkpoints=[c.path.name for c in list_checkpoints(checkpoints_root(run_dir))],
    )
