"""The folder layout of a training run's checkpoints: the one module that knows it.

    RUN/checkpoints/step-00000100/
        dcp/                  torch.distributed.checkpoint shards: trainable weights + optimiser state
        model/                consolidated trainable weights (`lmfusion_model.json` + safetensors) for sampling
        rng/rank-00000.pt     RNG states of every process
        trainer.json          the JSON states (progress, data position, LR scheduler), world size, config, inputs
        manifest.json         written last: SHA-256 and size of every file; the completion marker
    RUN/checkpoints/step-00000100.tmp-write/   a save in progress (or cut by a kill): never read

Training writes this layout (`training/checkpointing.py`), resume and retention list it, sampling and
evaluation read it. This module imports neither torch nor the training package.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfusion_cli.common.atomic import TMP_MARK
from lmfusion_cli.common.manifest import MANIFEST_NAME

KIND = "training-checkpoint"
"""The `kind` of a step folder's manifest."""
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
MODEL_META = "lmfusion_model.json"
"""The model package's checkpoint metadata file, in `model/` (and in merged or exported model folders)."""
MODEL_WEIGHTS = "model.safetensors"
"""The trainable weights beside it (`model.checkpoint.save_trainable`)."""
DCP_DIR = "dcp"
TRAINER_FILE = "trainer.json"
_STEP = r"step-(\d{8,})"
"""The step folder name (`step_dir_name` writes 8 digits or more); the one pattern for it."""
_STEP_RE = re.compile(f"^{_STEP}$")
_UNFINISHED_RE = re.compile(f"^{_STEP}{re.escape(TMP_MARK)}")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def temp_dir_name(step: int) -> str:
    """Where step `step` is written before its rename into place."""
    return step_dir_name(step) + TMP_MARK + "write"


def step_of(folder: Path) -> int | None:
    """The step of a step folder (`step-00000100` → 100); None for any other name."""
    match = _STEP_RE.match(Path(folder).name)
    return int(match.group(1)) if match else None


def is_unfinished(folder: Path) -> bool:
    """Whether `folder` is a step folder still being written (or cut by a kill)."""
    return bool(_UNFINISHED_RE.match(Path(folder).name))


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def run_of(step_dir: Path) -> Path | None:
    """The run folder holding `step_dir` (None when it is not under a `checkpoints/` folder)."""
    step_dir = Path(step_dir)
    return step_dir.parent.parent if step_dir.parent.name == CHECKPOINTS_DIR else None


def model_dir(step_dir: Path) -> Path:
    return Path(step_dir) / MODEL_DIR


def rng_file(step_dir: Path, rank: int) -> Path:
    return Path(step_dir) / "rng" / f"rank-{rank:05d}.pt"


def manifest_path(step_dir: Path) -> Path:
    return Path(step_dir) / MANIFEST_NAME


def read_step_manifest(step_dir: Path) -> dict[str, Any] | None:
    """The step folder's manifest as written, or None when it is missing or unreadable."""
    try:
        manifest = json.loads(manifest_path(step_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_complete(folder: Path) -> bool:
    """A step folder counts only with a readable manifest of our kind that says `complete`."""
    manifest = read_step_manifest(folder) or {}
    return manifest.get("kind") == KIND and bool(manifest.get("complete"))


def list_checkpoints(root: Path, complete_only: bool = True) -> list[Checkpoint]:
    """Step folders under `root` (a run's `checkpoints/`), oldest first (complete ones only by default)."""
    found = []
    if Path(root).is_dir():
        for p in Path(root).iterdir():
            step = step_of(p)
            if step is not None and p.is_dir() and (not complete_only or is_complete(p)):
                found.append(Checkpoint(step, p))
    return sorted(found, key=lambda c: c.step)


def latest_complete(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint under `root`, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def recorded_sha256(model_folder: Path, name: str) -> str | None:
    """The SHA-256 that the enclosing step folder's manifest records for `model_folder/name`, if any."""
    model_folder = Path(model_folder)
    if step_of(model_folder.parent) is None:
        return None
    files = (read_step_manifest(model_folder.parent) or {}).get("files") or {}
    return (files.get(f"{model_folder.name}/{name}") or {}).get("sha256")
