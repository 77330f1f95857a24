"""Progress bars that `--quiet` silences and that stay off when stderr is not a terminal.

The CLI records quietness in the `LMFUSION_QUIET` environment variable so that worker and torchrun
child processes inherit it; `LMFUSION_PROGRESS=1` forces bars on (e.g. under `script`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    if os.environ.get("LMFUSION_QUIET") == "1":
        return False
    if os.environ.get("LMFUSION_PROGRESS") == "1":
        return True
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0
) -> tqdm:
    """A tqdm bar (disabled unless `progress_enabled()`); use as an iterator or call `.update(n)`."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not progress_enabled(),
        dynamic_ncols=True,
        leave=False,
    )
