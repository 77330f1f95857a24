"""Logging setup: module loggers, rank 0 only, `--quiet` → warnings, `--verbose` → debug."""

from __future__ import annotations

import logging
import os


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if rank != 0 and not verbose:
        level = logging.ERROR
    root = logging.getLogger("lmfusion_cli")
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    for handler in root.handlers:
        handler.setLevel(level)
    root.propagate = False
    # Third-party chatter: keep warnings only.
    for name in ("transformers", "diffusers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR if not verbose else logging.INFO)
    os.environ["LMFUSION_QUIET"] = "1" if quiet else os.environ.get("LMFUSION_QUIET", "0")
