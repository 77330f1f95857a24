"""Training logs: one JSON line per logged step, TensorBoard scalars, a progress bar with ETA.

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

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int, tensorboard: bool):
        self.enabled = enabled
        self.path = run_dir / "logs" / "train.jsonl"
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        dropped = truncate_jsonl(self.path, start_step)
        if dropped:
            log.info("dropped %d log records past step %d (they are redone after the resume)", dropped, start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "logs" / "tb"), purge_step=start_step + 1)
        self._bar = progress(total=total_steps, initial=start_step, desc="train", unit="step")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None and "step" in record:
            prefix = "val/" if record.get("event") == "val" else "train/"
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(prefix + k, v, record["step"])
            self._tb.flush()

    def step_done(self, postfix: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
        self._file = self._tb = self._bar = None
