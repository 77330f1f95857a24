"""Processes and sharding: torchrun re-launch, process-group set-up, FSDP2/DDP wrapping, collectives.

- `init_distributed`: gloo on CPU, nccl on CUDA (DESIGN §8); one process without a launcher. The launch
  itself (torchrun re-launch, SLURM variables) is `common/launch.py`, the device `common/devices.py`.
- `wrap_model`: FSDP2 `fully_shard` on every unit the workload names (decoder layers) and then the
  root, so frozen text weights are sharded too; the optimiser is built afterwards over the trainable
  parameters only, so frozen weights get no optimiser state. DDP and `none` are the alternatives.
- Mixed precision (`compute_context`, `store_frozen_bf16_`; `devices.bf16_compute` decides): FSDP2 gets
  `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` (parameters all-gathered in bf16,
  gradients reduced in fp32, fp32 master weights and optimiser state); DDP and one process use
  autocast. Frozen weights may be stored in bf16 (no gradient, no optimiser state).
- Small collectives that are no-ops in one process.

This file knows nothing about the model's insides; the workload says which modules are units.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmfusion_cli.common.devices import bf16_compute, rank_device
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.launch import launched_rank
from lmfusion_cli.training.config import DistConfig


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


def init_distributed(config: DistConfig) -> DistContext:
    """Join the process group if launched with several processes; pick the device."""
    place = launched_rank()
    rank, world_size, local_rank = place.rank, place.world_size, place.local_rank
    device = rank_device(local_rank)
    cuda = device.type == "cuda"
    if torch.cuda.is_available() and not cuda:
        raise UserError(
            f"Process {rank} has local rank {local_rank} but this machine has {torch.cuda.device_count()} GPUs; "
            "pass --gpus at most that many."
        )
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
