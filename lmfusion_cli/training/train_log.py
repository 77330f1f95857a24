"""Training logs: one JSON line per logged step, the trackers' view of it (`trackers.py`), a progress bar.

`RUN/logs/train.jsonl` holds records `{"step", "loss", "text_loss", "text_targets" (learnable LM targets
it averages over), "image_loss", "lr", "grad_norm",
"tokens_per_s", "images_per_s", "memory_mb", "cpu_s" (this process's CPU seconds), "flops" (with
`log.count_flops`: forward+backward FLOPs of all processes since the previous record, the first step of
the interval counted and multiplied by its steps), ...}` and events (`{"event": "nonfinite", "step",
"keys"}`, `{"event": "resume", "step"}`, `{"event": "val", "step", "val_loss", ...}`). On resume
the records past the resumed step are dropped (they describe steps that will be redone), so the log
reads as one uninterrupted run. Rank 0 only; other ranks get a logger that writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from lmfusion_cli.common.atomic import atomic_write_text
from lmfusion_cli.common.progress import progress

log = logging.getLogger(__name__)


def memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA max allocated, else this process's peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak_kb / 1024 if sys.platform != "darwin" else peak_kb / 2**20


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Keep only records with step <= last_step (atomically); return how many were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            dropped += 1
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    atomic_write_text(path, "".join(k + "\n" for k in kept))
    return dropped


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class TrainLogger:
    """JSONL + TensorBoard + progress bar, all on rank 0."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        tensorboard: bool,
        report_to: tuple[str, ...] | None = None,
        params: dict[str, Any] | None = None,
        project: str = "lmfusion",
    ):
        """report_to: trackers (`trackers.py`); None = TensorBoard when `tensorboard`, as before issue 16."""
        self.enabled = enabled
        self.path = run_dir / "logs" / "train.jsonl"
        self._file = None
        self._trackers = None
        self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A fresh start (step 0) redoes everything, the step-0 validation included (issue 17: a kill
        # before the first checkpoint left it twice); a resume at step S keeps the records up to S.
        dropped = truncate_jsonl(self.path, start_step if start_step > 0 else -1)
        if dropped:
            log.info("dropped %d log records past step %d (they are redone after the resume)", dropped, start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        from lmfusion_cli.training.trackers import Trackers

        names = report_to if report_to is not None else (("tensorboard",) if tensorboard else ())
        self._trackers = Trackers(names, run_dir, start_step, params or {}, project)
        self._bar = progress(total=total_steps, initial=start_step, desc="train", unit="step")

    last_val: dict[str, Any] | None = None
    """The newest validation record written (for the run summary)."""

    def write(self, record: dict[str, Any]) -> None:
        if record.get("event") == "val":
            self.last_val = record
        if not self.enabled:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._trackers is not None:
            self._trackers.record(record)

    @property
    def wants_images(self) -> bool:
        return self._trackers is not None and self._trackers.wants_images

    def image(self, name: str, array, step: int) -> None:
        """An (H, W, 3) uint8 image to every tracker (the validation grid)."""
        if self._trackers is not None:
            self._trackers.image(name, array, step)

    def step_done(self, postfix: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._trackers is not None:
            self._trackers.close()
        if self._file is not None:
            self._file.close()
        self._file = self._trackers = self._bar = None
