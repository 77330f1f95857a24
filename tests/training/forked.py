"""Run a function on N gloo processes forked from a fork server (torch imported once there: ~10 s saved
per launch on a 2-core machine compared with torchrun). `test_cli_train.py` covers torchrun.

Not forked from the test process itself: once an earlier test has run backward there, autograd's
threads make a forked child fail ("Unable to handle autograd's threading in combination with
fork-based multiprocessing"). The fork server is a fresh interpreter that never ran autograd."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from collections.abc import Callable
from typing import Any


def _child(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, errors) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    code = 0
    try:
        import torch

        torch.set_num_threads(1)
        fn(*args)
    except BaseException as e:  # report to the parent; never run pytest's teardown in a child
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")
        code = 1
    finally:
        errors.close()
        errors.join_thread()  # flush the message before the hard exit
        os._exit(code)


def run_forked(nproc: int, fn: Callable[..., Any], *args: Any, timeout: float = 180) -> list[str]:
    """Call `fn(*args)` on `nproc` processes with RANK/WORLD_SIZE set; return the errors they reported."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed"])
    errors = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_child, args=(r, nproc, port, fn, args, errors)) for r in range(nproc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    codes = [p.exitcode for p in procs]
    return reported or ([f"exit codes {codes}"] if any(codes) else [])
