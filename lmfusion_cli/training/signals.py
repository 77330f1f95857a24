"""SIGTERM/SIGINT during training: finish the step, save, return (every process agrees first)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

import torch

from lmfusion_cli.training.distributed import DistContext, all_reduce


class SignalFlag:
    """SIGTERM/SIGINT set a flag; the loop checks it between steps (all processes agree)."""

    def __init__(self) -> None:
        self.signum = 0

    @contextlib.contextmanager
    def installed(self):
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
        """Whether any process got a signal (a collective: every process calls it each step)."""
        return all_reduce(torch.tensor([float(self.signum)], dtype=torch.float64), ctx, op="max").item() > 0
