"""Restart bookkeeping helpers: worker processes die with their SIGKILLed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRANDCHILD = (
    "import os, time; from lmfusion_cli.data.restart import exit_with_parent; "
    "exit_with_parent(os.getppid()); time.sleep(60)"
)
MIDDLE = (
    f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}]); "
    "print(p.pid, flush=True); time.sleep(60)"
)


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(line for line in status.read_text().splitlines() if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie has exited


def test_worker_exits_when_parent_is_killed():
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True)
    grandchild = int(middle.stdout.readline())
    time.sleep(1.0)  # let the watcher start
    assert _alive(grandchild)
    os.kill(middle.pid, signal.SIGKILL)
    middle.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(grandchild):
        time.sleep(0.1)
    alive = _alive(grandchild)
    if alive:
        os.kill(grandchild, signal.SIGKILL)
    assert not alive, "the worker outlived its killed parent"
