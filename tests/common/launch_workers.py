"""Worker functions for test_launch.py (module level: `launch_local` pickles them into spawned processes)."""

from __future__ import annotations

import os
import sys

from lmfusion_cli.common.launch import launched_rank


def report_place(tag: str) -> tuple[str, int, int, int, str]:
    place = launched_rank()
    return tag, place.rank, place.world_size, place.local_rank, os.environ["MASTER_PORT"]


def fail_on_rank_1() -> None:
    if launched_rank().rank == 1:
        sys.exit(2)
