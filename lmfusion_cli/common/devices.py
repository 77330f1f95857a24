"""Devices: which one a process computes on, and in which precision (issue 21: one owner).

- `resolve_device`: a `--device` value (`auto`, `cpu`, `cuda[:N]`) → the device to use; `auto` is CUDA when
  available. Used by `sample` and `evaluate`.
- `rank_device`: the device of process `rank` of a launch (`cuda:rank`, or the CPU when there is no such GPU).
  Used by `train` (torchrun's local rank) and `encode-latents --gpus` (`common/launch.py`).
- `bf16_compute`: `train.precision` → compute in bf16? `auto` is bf16 on CUDA devices that support it.

torch is imported inside the functions, so configs and the CLI can import this module cheaply. Which
attention kernel a device gets is the model's (`model/attention.resolve_backend`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmfusion_cli.common.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str) -> str:
    """`auto` → cuda when available, else cpu; an unavailable `cuda[:N]` is a one-sentence UserError."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {spec} was asked for but no CUDA device is available; use --device cpu.")
    return spec


def rank_device(rank: int) -> torch.device:
    """`cuda:rank` when this machine has that GPU, else the CPU (CPU-only runs and tests use gloo)."""
    import torch

    if rank < torch.cuda.device_count():  # 0 without CUDA
        return torch.device("cuda", rank)
    return torch.device("cpu")


def bf16_compute(precision: str, device: torch.device | str, *, assume_bf16_support: bool = False) -> bool:
    """`train.precision` (`auto` | `bf16` | `fp32`) → compute in bf16? `auto` = on CUDA devices that support it.

    `assume_bf16_support`: for a device that is not this machine's (`lmfusion plan` sizes a CUDA run on a
    laptop), take bf16 support as given instead of asking the driver."""
    import torch

    if precision == "auto":
        if torch.device(device).type != "cuda":
            return False
        return assume_bf16_support or torch.cuda.is_bf16_supported()
    return precision == "bf16"
