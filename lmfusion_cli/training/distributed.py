"""Processes and sharding: torchrun re-launch, process-group set-up, FSDP2/DDP wrapping, collectives.

- `relaunch_command`: `lmfusion train --gpus N [--nodes M]` outside a launcher re-runs itself under
  `python -m torch.distributed.run`; under an existing torchrun or SLURM launch it runs as is.
- `init_distributed`: gloo on CPU, nccl on CUDA (DESIGN §8); one process without a launcher.
- `wrap_model`: FSDP2 `fully_shard` on every unit the workload names (decoder layers) and then the
  root, so frozen text weights are sharded too; the optimiser is built afterwards over the trainable
  parameters only, so frozen weights get no optimiser state. DDP and `none` are the alternatives.
- Mixed precision (`bf16_compute`, `compute_context`, `store_frozen_bf16_`): FSDP2 gets
  `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` (parameters all-gathered in bf16,
  gradients reduced in fp32, fp32 master weights and optimiser state); DDP and one process use
  autocast. Frozen weights may be stored in bf16 (no gradient, no optimiser state).
- Small collectives that are no-ops in one process.

This file knows nothing about the model's insides; the workload says which modules are units.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.config import DistConfig

_LAUNCHED_VARS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def under_launcher(env: dict[str, str] | None = None) -> bool:
    """True under torchrun (or anything that set RANK/WORLD_SIZE), or in a multi-task SLURM step."""
    env = dict(os.environ if env is None else env)
    if any(v in env for v in _LAUNCHED_VARS) or "WORLD_SIZE" in env:
        return True
    return int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env


def adopt_slurm_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Map SLURM's task variables to torch's (RANK, WORLD_SIZE, LOCAL_RANK) when torchrun did not set them.

    MASTER_ADDR/MASTER_PORT must come from the job script (e.g. the first host of the allocation)."""
    env = os.environ if env is None else env
    if "RANK" in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    mapped = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
    }
    if "MASTER_ADDR" not in env:
        raise UserError(
            "This SLURM launch has several tasks but no MASTER_ADDR; export MASTER_ADDR and "
            "MASTER_PORT in the job script (the first host of the allocation and a free port)."
        )
    env.update(mapped)
    return mapped


def relaunch_command(config: DistConfig, argv: list[str], env: dict[str, str] | None = None) -> list[str] | None:
    """The torchrun command that re-runs `argv` on `gpus × nodes` processes, or None to run here.

    `argv` is this process's `lmfusion` argument list (without the program name)."""
    if config.gpus * config.nodes == 1 or under_launcher(env):
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(config.gpus)]
    if config.nodes > 1:
        if not config.rdzv_endpoint:
            raise UserError(
                f"--nodes {config.nodes} needs a rendezvous address; pass --set "
                "dist.rdzv_endpoint=HOST:PORT (the same on every node) or launch with torchrun/SLURM."
            )
        cmd += ["--nnodes", str(config.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", config.rdzv_endpoint]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "lmfusion_cli"] + list(argv)


def format_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def init_distributed(config: DistConfig) -> DistContext:
    """Join the process group if launched with several processes; pick the device."""
    adopt_slurm_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size == 1:
        return DistContext(device=device)
    backend = config.backend if config.backend != "auto" else ("nccl" if cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group. gc first: gloo threads otherwise abort at exit (MEASURED-NOTES)."""
    gc.collect()
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def bf16_compute(precision: str, device: torch.device) -> bool:
    """train.precision → compute in bf16? `auto` = on CUDA devices that support it."""
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def uses_fsdp(strategy: str, ctx: DistContext) -> bool:
    return ctx.distributed and strategy == "fsdp"


def compute_context(precision: str, strategy: str, ctx: DistContext) -> contextlib.AbstractContextManager | None:
    """The autocast of a micro-step: bf16 autocast for one process and DDP; None under FSDP (its
    `MixedPrecisionPolicy` casts the parameters instead) and in fp32."""
    if not bf16_compute(precision, ctx.device) or uses_fsdp(strategy, ctx):
        return None
    return torch.autocast(ctx.device.type, dtype=torch.bfloat16)


def store_frozen_bf16_(model: nn.Module) -> int:
    """Store every frozen parameter in bf16 (in place); returns how many. Trainable ones stay as they are."""
    count = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)
            count += 1
    return count


def wrap_model(
    model: nn.Module, units: Iterable[nn.Module | list[nn.Module]], strategy: str, ctx: DistContext, bf16: bool = False
) -> nn.Module:
    """Shard or replicate `model` across processes. `requires_grad` must already be final.

    fsdp: `fully_shard` each unit (a module, or a list of modules sharded as one communication group;
    frozen or not), then the root; with `bf16`, a MixedPrecisionPolicy (bf16 parameters in forward and
    backward, fp32 gradient reduction; the sharded master weights keep their dtype). ddp:
    DistributedDataParallel (unused trainable parameters allowed). none / one process: the model itself."""
    if not ctx.distributed or strategy == "none":
        if ctx.distributed:
            raise UserError("dist.strategy=none cannot run on several processes; use fsdp or ddp.")
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32 if bf16 else None
        )
        for unit in units:
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    raise ValueError(f"unknown strategy {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The user module inside a DDP wrapper (FSDP2 modifies the module in place)."""
    return getattr(model, "module", model)


def set_grad_sync(model: nn.Module, enabled: bool) -> None:
    """Skip the gradient all-reduce/reduce-scatter on accumulation micro-steps but the last."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    elif hasattr(model, "require_backward_grad_sync"):  # DDP
        model.require_backward_grad_sync = enabled


def all_reduce(values: torch.Tensor, ctx: DistContext, op: str = "sum") -> torch.Tensor:
    """Sum (or max) a float64 CPU/device tensor over processes; identity in one process."""
    if not ctx.distributed:
        return values
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    out = values.to(ctx.device).clone()
    dist.all_reduce(out, op=reduce_op)
    return out.cpu()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
