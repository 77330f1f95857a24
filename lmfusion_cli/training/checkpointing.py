"""Training checkpoints: one `Checkpointer` saves and loads a dict of Stateful objects as an atomic step folder.

The folder layout (`step-00000100/`: `dcp/`, `model/`, `rng/`, `trainer.json`, `manifest.json`) is
`common/checkpoint_layout.py`'s; the objects and where each is stored are `training/state.py`'s.
`model/` (what sampling, evaluation and export load) holds the weight average when `train.ema` keeps
one (`state.WeightAverage`); `dcp/` holds the raw weights and the average, so a resume is exact.

All processes write into `step-N.tmp-write`; rank 0 writes the manifest and renames the folder into
place, so a folder under a final name is complete by construction, and `--resume auto` additionally
ignores any `step-*` folder without a complete manifest (a copy truncated by hand, a foreign tool).
Older complete checkpoints are deleted only after a newer one is complete (keep the last M). A
failed save (disk full) removes its temp folder and leaves every earlier checkpoint untouched.

A load verifies every file's SHA-256 (rank 0, every process learns the outcome), then runs the one
compatibility check (`resume.resume_change`: resume-fixed config keys and the workload's inputs)
before any tensor is read. Nothing is unpickled beyond tensors, numbers and DCP's own metadata
classes (`safe_load`): a checkpoint someone sent you cannot run code, whatever its manifest says.

DCP options follow MEASURED-NOTES: `ignore_frozen_params=True` (frozen text weights are not stored;
the checkpoint points at its base) and `strict=False` on load; model state dicts are cut to the
trainable parameters' own names (`state.trainable_only`, issue 16).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lmfusion_cli.common import checkpoint_layout as layout
from lmfusion_cli.common.atomic import atomic_file, atomic_write_json, fsync_dir, remove_stale_temps
from lmfusion_cli.common.checkpoint_layout import KIND, Checkpoint, list_checkpoints, step_dir_name
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import MANIFEST_NAME, file_entry, verify_files, write_manifest
from lmfusion_cli.training.distributed import DistContext, all_reduce, barrier, broadcast_object
from lmfusion_cli.training.resume import is_foreign, resume_change
from lmfusion_cli.training.safe_load import load_dcp, load_rng
from lmfusion_cli.training.state import ModelState, Stateful, WeightAverage, stored_in, trainable_only

log = logging.getLogger(__name__)

_FULL = StateDictOptions(ignore_frozen_params=True, strict=False, full_state_dict=True, cpu_offload=True)


class Checkpointer:
    """Saves and loads `states` (name → Stateful) as `root/step-N` folders; every call is collective.

    `workload` writes the consolidated `model/` folder and `describe()`s the inputs a resume must match;
    `config` (the resolved run config as a dict) is recorded and checked on load (`resume_change`)."""

    def __init__(
        self,
        root: Path,
        states: dict[str, Stateful],
        ctx: DistContext,
        workload: Any = None,
        config: dict[str, Any] | None = None,
        keep_last: int = 1,
    ):
        self.root, self.states, self.ctx = Path(root), states, ctx
        self.workload, self.config, self.keep_last = workload, config, keep_last

    def _where(self, place: str) -> dict[str, Stateful]:
        return {name: obj for name, obj in self.states.items() if stored_in(obj) == place}

    def save(self, step: int) -> Path:
        """Save every state as `root/step-N`, atomically; return the folder."""
        root, ctx = self.root, self.ctx
        final, tmp = root / step_dir_name(step), root / layout.temp_dir_name(step)
        previous = list_checkpoints(root)
        need = _folder_bytes(previous[-1].path) if previous else 0
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(ctx)
        error: OSError | None = None
        try:
            self._write(tmp, step)
        except OSError as e:
            error = e
        except BaseException as e:  # DCP wraps a rank's OSError in a CheckpointException (a BaseException)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            cause = _find_oserror(e)
            if cause is None and _disk_full(root, need):
                cause = OSError(errno.ENOSPC, "No space left on device")
            if cause is None:
                raise
            error = cause
        failed = all_reduce(torch.tensor([1.0 if error else 0.0], dtype=torch.float64), ctx, op="max")
        if failed.item() > 0:
            need = max(need, _folder_bytes(tmp))
            if ctx.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            barrier(ctx)
            err = error or OSError(errno.EIO, "another process failed to write its part")
            raise UserError(_disk_error_sentence(step, root, err, previous, need)) from None
        if ctx.is_main:
            _finish(tmp, final, step, ctx, root, previous, self.keep_last)
        barrier(ctx)
        return final

    def _write(self, tmp: Path, step: int) -> None:
        ctx = self.ctx
        with warnings.catch_warnings():  # one process: DCP warns that it saves without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(
                {n: s.state_dict() for n, s in self._where("dcp").items()}, checkpoint_id=str(tmp / layout.DCP_DIR)
            )
        model, average = self.states.get("model"), self.states.get("ema")
        if self.workload is not None and isinstance(model, ModelState):  # consolidated weights for sampling
            # inside the block: on one process the state dict's tensors are the parameters themselves
            with average.applied() if isinstance(average, WeightAverage) else contextlib.nullcontext():
                full = trainable_only(model.model, get_model_state_dict(model.model, options=_FULL))  # collective
                if ctx.is_main:
                    self.workload.save_inference(full, layout.model_dir(tmp))
        for obj in self._where("rank").values():
            with atomic_file(layout.rng_file(tmp, ctx.rank)) as path:
                torch.save(obj.state_dict(), path)
        if ctx.is_main:
            record = {name: obj.state_dict() for name, obj in self._where("json").items()}
            record.update(step=step, world_size=ctx.world_size, config=self.config or {})
            if self.workload is not None:
                record["trains"] = self.workload.describe()
            atomic_write_json(tmp / layout.TRAINER_FILE, record)

    def load(self, folder: Path) -> dict[str, Any]:
        """Verify `folder`, check it fits this run, restore every state; return its trainer.json record."""
        folder, ctx = Path(folder), self.ctx
        problem = None
        if ctx.is_main:
            try:
                verify_checkpoint(folder)
            except UserError as e:
                problem = str(e)
        problem = broadcast_object(problem, ctx)
        if problem:
            raise UserError(problem)
        record = read_trainer_record(folder)
        now = {"trains": self.workload.describe()} if self.workload is not None else {}
        if self.config is not None:
            now["config"] = self.config
        change = resume_change(record, now, foreign=is_foreign(self.root, folder))
        if change:
            raise UserError(f"Cannot resume from {folder}: {change}")
        sharded = {name: obj.state_dict() for name, obj in self._where("dcp").items()}  # templates, loaded in place
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            load_dcp(sharded, folder / layout.DCP_DIR)
        for name, obj in self._where("dcp").items():
            obj.load_state_dict(sharded[name])
        for name, obj in self._where("json").items():
            try:
                obj.load_state_dict(record[name])
            except ValueError as e:  # the data stream refuses another cache length or seed
                raise UserError(f"Cannot resume from {folder}: {e}; use the same latent cache and seed.") from e
        rng = layout.rng_file(folder, ctx.rank)
        if record["world_size"] == ctx.world_size and rng.is_file():
            for obj in self._where("rank").values():
                obj.load_state_dict(load_rng(rng))
        return record


def read_trainer_record(folder: Path) -> dict[str, Any]:
    """A step folder's trainer.json; a checkpoint from before the Stateful layout keeps its counters at the
    top level (`step`, `bad_in_row`, `skipped_steps`): they are read as the `progress` section."""
    record = json.loads((Path(folder) / layout.TRAINER_FILE).read_text())
    if "progress" not in record and "bad_in_row" in record:
        record["progress"] = {k: record[k] for k in ("step", "bad_in_row", "skipped_steps")}
    return record


def prepare_root(root: Path, ctx: DistContext) -> None:
    """Create `root` and remove leftovers of interrupted saves (rank 0), then sync."""
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for p in remove_stale_temps(root):
            log.warning("removed the unfinished checkpoint %s (a save was interrupted)", p.name)
    barrier(ctx)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _disk_full(root: Path, need: int) -> bool:
    """Whether `root`'s file system has no room for `need` bytes (nor 1 MiB): torch's zip writer
    reports a full disk as a RuntimeError ("unexpected pos"), not as an OSError (issue 17)."""
    try:
        return shutil.disk_usage(root).free < max(need, 1 << 20)
    except OSError:
        return False


def _disk_error_sentence(step: int, root: Path, err: OSError, previous: list[Checkpoint], need: int = 0) -> str:
    what = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    space = "free space"
    if err.errno == errno.ENOSPC and need:
        space = (
            f"free about {need / 2**20:.1f} MiB (one checkpoint; {shutil.disk_usage(root).free / 2**20:.1f} MiB "
            "are free)"
        )
    kept = f"the previous checkpoint {previous[-1].path.name} is intact" if previous else "no earlier checkpoint exists"
    return (
        f"Saving checkpoint {step_dir_name(step)} in {root} failed ({what}); {kept}: {space} or fix "
        "the folder and rerun with --resume auto."
    )


def _find_oserror(e: BaseException) -> OSError | None:
    seen = 0
    stack: list[Any] = [e]
    while stack and seen < 50:
        seen += 1
        x = stack.pop()
        if isinstance(x, OSError):
            return x
        if isinstance(x, BaseException):
            stack += [x.__cause__, x.__context__]
        failures = getattr(x, "failures", None)  # CheckpointException: {rank: exception or traceback}
        if isinstance(failures, dict):
            stack += [v[0] if isinstance(v, tuple) else v for v in failures.values()]
    return None


def _finish(
    tmp: Path, final: Path, step: int, ctx: DistContext, root: Path, previous: list[Checkpoint], keep_last: int
) -> None:
    """Rank 0: hash every file, write the manifest (the marker), rename into place, prune old ones."""
    try:
        files = {str(p.relative_to(tmp)): file_entry(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_manifest(tmp, KIND, step=step, world_size=ctx.world_size, files=files)
        for d in [tmp, *[p for p in tmp.rglob("*") if p.is_dir()]]:
            fsync_dir(d)
        if final.exists():  # an incomplete folder with this name (never a complete one: steps only grow)
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(root)
    except OSError as e:
        need = _folder_bytes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(_disk_error_sentence(step, root, e, previous, need)) from None
    complete = list_checkpoints(root)
    for old in complete[:-keep_last]:
        if old.path != final:
            shutil.rmtree(old.path, ignore_errors=True)
            log.info("removed old checkpoint %s (keep_last=%d)", old.path.name, keep_last)


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """Check every file against the manifest's SHA-256; a damaged one is a UserError naming it."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    problems = verify_files(folder, manifest)
    if problems:
        raise UserError(problems[0].rstrip(".") + "; delete that checkpoint folder to resume from an earlier one.")
    return manifest
