"""Logging setup: module loggers, rank 0 only, `--quiet` → warnings, `--verbose` → debug."""

from __future__ import annotations

import logging
import os
import sys


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not to the stream it was created
    with: a redirected or replaced stderr (pytest's capture, a wrapper) is never written after close."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if rank != 0 and not verbose:
        level = logging.ERROR
    root = logging.getLogger("lmfusion_cli")
    root.setLevel(level)
    for handler in list(root.handlers):
        if not isinstance(handler, _CurrentStderrHandler):
            root.removeHandler(handler)
    if not root.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    for handler in root.handlers:
        handler.setLevel(level)
    root.propagate = False
    # Third-party chatter: keep warnings only.
    for name in ("transformers", "diffusers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR if not verbose else logging.INFO)
    os.environ["LMFUSION_QUIET"] = "1" if quiet else os.environ.get("LMFUSION_QUIET", "0")
