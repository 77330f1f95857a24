"""Reading a training checkpoint without running code from it (issue 17).

A checkpoint folder may come from someone else (`--resume PATH`, or a folder copied into a run with
`--resume auto`), and its SHA-256 manifest proves nothing about its author: whoever wrote the files
wrote the manifest. So nothing in a checkpoint is unpickled with the full `pickle` machinery:

- the RNG states are tensors and plain numbers (`rng_state`, saved by `state.RNGState`; `load_rng`), read with `torch.load(...,
  weights_only=True)`; the previous format (numpy arrays inside) is migrated through the same
  weights-only unpickler with numpy's array classes allowed, nothing else;
- `dcp/.metadata` is read by `SafeFileSystemReader`, whose unpickler resolves only the classes that
  `torch.distributed.checkpoint` itself writes there (its metadata dataclasses, `torch.Size`, dtypes,
  layouts, paths); its shard entries must name files inside the `dcp/` folder;
- DCP's non-tensor values (optimiser hyper-parameters) are read by `SafeLoadPlanner` weights-only,
  where DCP's own planner uses `torch.load(..., weights_only=False)`.

Anything else is an `UnsafeCheckpointError` (a UserError: one line naming the file and what it held).
This module does not verify checksums (see `checkpointing.verify_checkpoint`), nor decide what to load.
"""

from __future__ import annotations

import inspect
import io
import pickle
import random
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.metadata as dcp_metadata
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from lmfusion_cli.common.errors import UserError, what_was_refused

RNG_FORMAT = 2
"""Version of the RNG file layout: 2 = tensors and numbers only (1 = a pickled dict with numpy arrays)."""


class UnsafeCheckpointError(UserError):
    """A checkpoint file holds Python objects that would run code (or be unknown classes) on load."""


def _refusal(path: Path | str, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path} holds {what}, which lmfusion never unpickles (a checkpoint could run its author's code); "
        "resume only from checkpoints written by lmfusion, or start a new --out"
    )


# ---------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers (loadable with `weights_only=True`)."""
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "format": RNG_FORMAT,
        "torch": torch.get_rng_state(),
        "numpy": {
            "algorithm": str(algorithm),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states made by `rng_state` (format 2) or by lmfusion before format 2 (numpy inside)."""
    torch.set_rng_state(state["torch"])
    if state.get("format") == RNG_FORMAT:
        n = state["numpy"]
        np.random.set_state(
            (n["algorithm"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
        p = state["python"]
        random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    else:
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_array_globals() -> list[Any]:
    """What torch.save of a numpy RNG state references: the array rebuilder, ndarray and its dtypes."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [
        getattr(np.dtypes, n)
        for n in ("UInt32DType", "Int64DType", "Float64DType")
        if hasattr(np, "dtypes") and hasattr(np.dtypes, n)
    ]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def load_rng(path: Path) -> dict[str, Any]:
    """An RNG file read weights-only; a file holding anything but tensors, numbers and (format 1)
    numpy arrays is an UnsafeCheckpointError naming the object it asked for."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, what_was_refused(str(e))) from None
    if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= set(state):
        raise UserError(
            f"{path} is not an lmfusion RNG file (keys {sorted(state) if isinstance(state, dict) else type(state).__name__}); "
            "delete that checkpoint folder to resume from an earlier one"
        )
    return state


# --------------------------------------------------------------------------------------- DCP metadata


def _allowed_metadata_globals() -> dict[tuple[str, str], Any]:
    """The (module, name) pairs DCP's own `.metadata` pickle refers to, and nothing else."""
    allowed: dict[tuple[str, str], Any] = {}
    for name, obj in vars(dcp_metadata).items():
        if inspect.isclass(obj) and obj.__module__ == dcp_metadata.__name__:
            allowed[(dcp_metadata.__name__, name)] = obj
    allowed[(_StorageInfo.__module__, "_StorageInfo")] = _StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    for name, obj in vars(torch).items():
        if isinstance(obj, torch.dtype):
            allowed[("torch", name)] = obj
    for cls in (PosixPath, WindowsPath, PurePosixPath, PureWindowsPath, Path):
        allowed[("pathlib", cls.__name__)] = cls
        allowed[("pathlib._local", cls.__name__)] = cls
    allowed[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    return allowed


_ALLOWED = _allowed_metadata_globals()


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only DCP's metadata classes; any other global (os.system, builtins.exec) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("Unsupported operand persistent id")


def read_dcp_metadata(path: Path) -> Metadata:
    """Unpickle a DCP `.metadata` file with the allow-list; refuse anything else in one line."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise _refusal(path, what_was_refused(str(e))) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise UserError(
            f"{path} is not a readable DCP metadata file ({type(e).__name__}); delete that "
            "checkpoint folder to resume from an earlier one"
        ) from None
    if not isinstance(metadata, Metadata):
        raise _refusal(path, f"a {type(metadata).__name__} instead of DCP metadata")
    for info in (metadata.storage_data or {}).values():
        relative = str(getattr(info, "relative_path", ""))
        if (
            not isinstance(info, _StorageInfo)
            or not relative
            or Path(relative).name != relative
            or relative in (".", "..")
        ):
            raise _refusal(path, f"a shard entry pointing outside its folder ({relative!r})")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with `.metadata` read through the allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_dcp_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def load_dcp(state: dict[str, Any], folder: Path) -> None:
    """`dcp.load(state)` from `folder` through the safe reader and planner; a refusal inside DCP (which
    wraps every rank's exception in a CheckpointException) comes out as the one UserError."""
    read_dcp_metadata(folder / ".metadata")  # refuse before DCP wraps the error in its own traceback
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(folder), planner=SafeLoadPlanner())
    except BaseException as e:  # CheckpointException derives from BaseException
        refusal = _find_user_error(e)
        if refusal is None:
            raise
        raise refusal from None


def _find_user_error(e: BaseException) -> UserError | None:
    stack: list[Any] = [e]
    for _ in range(50):
        if not stack:
            break
        x = stack.pop()
        if isinstance(x, UserError):
            return x
        if isinstance(x, BaseException):
            stack += [x.__cause__, x.__context__, *(a for a in x.args if isinstance(a, dict))]
        if isinstance(x, dict):  # CheckpointException(msg, {rank: (exception, traceback)})
            stack += [v[0] if isinstance(v, tuple) else v for v in x.values()]
    return None


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor values weights-only."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refusal(f"the DCP entry {read_item.dest_index.fqn}", what_was_refused(str(e))) from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj
