"""Training checkpoints: atomic step folders, a completion marker, retention, verified resume.

Layout of `RUN/checkpoints/step-00000100/`:

    dcp/                  torch.distributed.checkpoint shards: trainable weights + optimiser state
    model/                consolidated trainable weights for `lmfusion sample` (the workload writes it)
    rng/rank-00000.pt     RNG states of every process, as tensors and numbers (read weights-only)
    trainer.json          step, data position, scheduler, counters, world size, resolved config, and
                          `trains`: the workload's `describe()` (base config hash, model config, the
                          latent cache's VAE), which a resume must match (`input_change`)
    manifest.json         written last: SHA-256 and size of every file above; the completion marker

All processes write into `step-N.tmp-write`; rank 0 writes the manifest and renames the folder into
place, so a folder under a final name is complete by construction, and `--resume auto` additionally
ignores any `step-*` folder without a complete manifest (a copy truncated by hand, a foreign tool).
Older complete checkpoints are deleted only after a newer one is complete (keep the last M). A
failed save (disk full) removes its temp folder and leaves every earlier checkpoint untouched.

Nothing is unpickled beyond tensors, numbers and DCP's own metadata classes (`safe_load`): a
checkpoint someone sent you cannot run code, whatever its manifest says.

DCP options follow MEASURED-NOTES: `ignore_frozen_params=True` (frozen text weights are not stored;
the checkpoint points at its base) and `strict=False` on load. `ignore_frozen_params` alone still keeps a
tied alias of a frozen weight (SmolLM2's and Llama-3.2's `lm_head.weight` is `embed_tokens.weight`:
`named_parameters` lists it once, `state_dict` twice), so every model state dict is cut to the
trainable parameters' own names (`trainable_only`) before it is saved or loaded (issue 16).
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from lmfusion_cli.common.atomic import TMP_MARK, atomic_file, atomic_write_json, fsync_dir, remove_stale_temps
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import MANIFEST_NAME, file_entry, verify_files, write_manifest
from lmfusion_cli.training.distributed import DistContext, all_reduce, barrier, broadcast_object, unwrap
from lmfusion_cli.training.safe_load import load_dcp, load_rng, save_rng, set_rng_state

log = logging.getLogger(__name__)

KIND = "training-checkpoint"
_STEP_RE = re.compile(r"^step-(\d{8})$")
_SHARDED = StateDictOptions(ignore_frozen_params=True, strict=False)
_FULL = StateDictOptions(ignore_frozen_params=True, strict=False, full_state_dict=True, cpu_offload=True)


def trainable_only(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` without the parameters that are not trainable under their own name: frozen weights and
    aliases of a tied weight (`lm_head.weight` when it is `embed_tokens.weight`). Buffers stay."""
    module = unwrap(model)
    params = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k not in params or k in trainable}


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def is_complete(folder: Path) -> bool:
    """A step folder counts only with a readable manifest of our kind that says `complete`."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("kind") == KIND and bool(manifest.get("complete"))


def list_checkpoints(root: Path, complete_only: bool = True) -> list[Checkpoint]:
    """Step folders under `root`, oldest first (complete ones only by default)."""
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and p.is_dir() and (not complete_only or is_complete(p)):
                found.append(Checkpoint(int(m.group(1)), p))
    return sorted(found, key=lambda c: c.step)


def find_resume_point(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: `auto` → newest complete in the run (or None), `never` → None
    (refusing a run folder that already has checkpoints), else the given step or run folder."""
    root = run_dir / "checkpoints"
    if resume == "auto":
        found = list_checkpoints(root)
        skipped = [c.path.name for c in list_checkpoints(root, complete_only=False) if not is_complete(c.path)]
        if skipped:
            log.warning("ignoring incomplete checkpoint folder(s): %s", ", ".join(skipped))
        return found[-1].path if found else None
    if resume == "never":
        if list_checkpoints(root):
            raise UserError(
                f"{run_dir} already holds checkpoints; pass --resume auto to continue it or choose another --out."
            )
        return None
    path = Path(resume)
    if (path / "checkpoints").is_dir():
        found = list_checkpoints(path / "checkpoints")
        if not found:
            raise UserError(f"{path} has no complete checkpoint to resume from; pass --resume never to start anew.")
        return found[-1].path
    if not is_complete(path):
        raise UserError(
            f"{path} is not a complete training checkpoint (no complete {MANIFEST_NAME}); "
            "pass a step folder under RUN/checkpoints or --resume auto."
        )
    return path


def prepare_root(root: Path, ctx: DistContext) -> None:
    """Create `root` and remove leftovers of interrupted saves (rank 0), then sync."""
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for p in remove_stale_temps(root):
            log.warning("removed the unfinished checkpoint %s (a save was interrupted)", p.name)
    barrier(ctx)


def _write_rng(folder: Path, rank: int) -> None:
    with atomic_file(folder / "rng" / f"rank-{rank:05d}.pt") as tmp:
        save_rng(tmp)


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


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    workload: Any,
    ctx: DistContext,
    keep_last: int,
) -> Path:
    """Save everything a resume needs as `root/step-N`, atomically; collective over all processes."""
    final = root / step_dir_name(step)
    tmp = root / (final.name + TMP_MARK + "write")
    previous = list_checkpoints(root)
    need = _folder_bytes(previous[-1].path) if previous else 0
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(ctx)
    error: OSError | None = None
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_SHARDED)
        model_sd = trainable_only(model, model_sd)
        with warnings.catch_warnings():  # one process: DCP warns that it saves without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        full = trainable_only(model, get_model_state_dict(model, options=_FULL))  # collective; rank 0 gets them
        if ctx.is_main:
            workload.save_inference(full, tmp / "model")
        _write_rng(tmp, ctx.rank)
        if ctx.is_main:
            atomic_write_json(
                tmp / "trainer.json",
                {**trainer_state, "step": step, "world_size": ctx.world_size, "trains": workload.describe()},
            )
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
        _finish(tmp, final, step, ctx, root, previous, keep_last)
    barrier(ctx)
    return final


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


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext, workload: Any = None
) -> dict[str, Any]:
    """Restore weights, optimiser and this rank's RNG from `folder`; return trainer.json.

    Rank 0 verifies the checksums first and every process learns the outcome. With `workload`, its
    `describe()` must match the one saved (another latent cache VAE, latent size or channel count, or
    a base with another config is refused in one sentence before any tensor is loaded)."""
    problem = None
    if ctx.is_main:
        try:
            verify_checkpoint(folder)
        except UserError as e:
            problem = str(e)
    problem = broadcast_object(problem, ctx)
    if problem:
        raise UserError(problem)
    trainer_state = json.loads((folder / "trainer.json").read_text())
    change = (
        input_change(trainer_state["trains"], workload.describe())
        if (workload is not None and "trains" in trainer_state)
        else None
    )
    if change:
        raise UserError(
            f"Cannot resume from {folder}: {change}; resume with the latent cache and base model the run "
            "was trained on, or start a new --out."
        )
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_SHARDED)
    state = {"model": trainable_only(model, model_sd), "optim": optim_sd}  # an older alias in the files is ignored
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_dcp(state, folder / "dcp")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=_SHARDED)
    rng_file = folder / "rng" / f"rank-{ctx.rank:05d}.pt"
    if trainer_state["world_size"] == ctx.world_size and rng_file.is_file():
        set_rng_state(load_rng(rng_file))
    return trainer_state


# Where an input lives, not what it is (the config's base.path is a resume-fixed key already; a VAE
# counts as the same by its weights and config hashes, as in `data.latents.check_expectation`).
_LOCATION_KEYS = {"base", "latent_vae.id"}
_NAMES = {
    "lmfusion_config.latent_size": "the latent size (the cache's resolution)",
    "lmfusion_config.latent_channels": "the latent channel count",
    "base_config_sha256": "the base model's config hash",
}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def input_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first difference between a checkpoint's `trains` record and the workload's `describe()` now,
    as a clause (None when they match); locations (paths, ids) are not compared, contents are."""
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(now)))  # JSON: tuples → lists, as saved
    for key in sorted(set(old) | set(new)):
        if key in _LOCATION_KEYS or old.get(key) == new.get(key):
            continue
        if key.startswith("latent_vae."):
            return (
                f"the latent cache was made with another VAE ({key.split('.', 1)[1]} {old.get(key)!r} → "
                f"{new.get(key)!r}; VAE '{old.get('latent_vae.id')}' then, '{new.get('latent_vae.id')}' now)"
            )
        return f"{_NAMES.get(key, key)} changed from {old.get(key)!r} to {new.get(key)!r}"
    return None
