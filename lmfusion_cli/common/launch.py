"""The one launcher of several processes: torchrun's elastic agent, for `train` and `encode-latents` alike.

- `relaunch_command`: `lmfusion train --gpus N [--nodes M]` outside a launcher re-runs its own command line
  under `python -m torch.distributed.run` (torchrun's command line: several nodes, rendezvous); under an
  existing torchrun or SLURM launch it runs as is.
- `launch_local`: a library call that wants N processes on this machine (`run_encode` with `gpus > 1`)
  runs a function under the same agent through its Python API (`elastic_launch`), one node, standalone
  rendezvous on a free local port.

Either way every process sees torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT;
`adopt_slurm_env` maps SLURM's to it), reads its place with `launched_rank`, and picks its device with
`devices.rank_device(local_rank)`. Whether the processes then form a process group is the caller's
business (`training/distributed.py` does, `encode-latents` needs none)."""

from __future__ import annotations

import os
import shlex
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lmfusion_cli.common.errors import UserError

_LAUNCHED_VARS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


class LaunchSpec(Protocol):
    """How many processes: `gpus` per node on `nodes` nodes meeting at `rdzv_endpoint` (e.g. `DistConfig`)."""

    gpus: int
    nodes: int
    rdzv_endpoint: str | None


@dataclass(frozen=True)
class Rank:
    """This process's place in a launch (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


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


def launched_rank(env: dict[str, str] | None = None) -> Rank:
    """This process's rank, world size and local rank, from the launcher's environment (SLURM's adopted)."""
    env = os.environ if env is None else env
    adopt_slurm_env(env)
    return Rank(
        rank=int(env.get("RANK", "0")),
        world_size=int(env.get("WORLD_SIZE", "1")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
    )


def relaunch_command(spec: LaunchSpec, argv: list[str], env: dict[str, str] | None = None) -> list[str] | None:
    """The torchrun command that re-runs `argv` on `gpus × nodes` processes, or None to run here.

    `argv` is this process's `lmfusion` argument list (without the program name)."""
    if spec.gpus * spec.nodes == 1 or under_launcher(env):
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(spec.gpus)]
    if spec.nodes > 1:
        if not spec.rdzv_endpoint:
            raise UserError(
                f"--nodes {spec.nodes} needs a rendezvous address; pass --set "
                "dist.rdzv_endpoint=HOST:PORT (the same on every node) or launch with torchrun/SLURM."
            )
        cmd += ["--nnodes", str(spec.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", spec.rdzv_endpoint]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "lmfusion_cli"] + list(argv)


def format_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


class LaunchFailed(Exception):
    """Some processes of `launch_local` failed: `exit_codes` {rank: exit code} of `world_size` processes."""

    def __init__(self, exit_codes: dict[int, int], world_size: int):
        super().__init__(f"processes {sorted(exit_codes)} of {world_size} failed (exit codes {exit_codes})")
        self.exit_codes, self.world_size = exit_codes, world_size


def launch_local(fn: Callable[..., Any], args: Sequence[Any], nproc: int) -> dict[int, Any]:
    """Run `fn(*args)` in `nproc` fresh (spawned) processes on this machine under torchrun's agent; return
    {rank: return value}. Raises `LaunchFailed` naming the ranks that exited non-zero (their own stderr
    says why). `fn` and `args` must be picklable; `fn` reads its place with `launched_rank()`."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # standalone: a free port on this machine, as `torchrun --standalone`
        rdzv_configs={"is_host": True},
        max_restarts=0,
        start_method="spawn",
        monitor_interval=0.1,
    )
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as e:
        raise LaunchFailed({rank: f.exitcode for rank, f in sorted(e.failures.items())}, nproc) from None
