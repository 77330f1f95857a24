"""Who may write an output folder: one process at a time (`output_lock`), and only its own stage
(`refuse_foreign`). Issue 17: two `train` runs on one `--out` lost log records and deleted each
other's checkpoints, and `train --out` on a latent cache replaced the cache's manifest.

The lock is an `fcntl.flock` on a file *beside* the folder, `PARENT/.NAME.lmfusion-lock`, so it also
covers stages that build their output in a temp folder and swap it in (sample, `--overwrite`). The
file holds the holder's PID, host and command; the kernel drops the lock when the holder exits, even
on kill -9, so a leftover file never blocks anyone. This module knows no stage."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmfusion_cli.common.atomic import TMP_MARK, fsync_dir
from lmfusion_cli.common.errors import UserError

MANIFEST_NAME = "manifest.json"


def lock_path(out: Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lmfusion-lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, `lmfusion {info['command']}` since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _holder_is_dead(path: Path) -> bool:
    """The recorded holder is a process of this host that no longer exists (its forked workers may
    still hold the lock for the second or two they take to notice)."""
    try:
        info = json.loads(path.read_text())
        if info["host"] != socket.gethostname():
            return False
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return False


def _acquire(fd: int, path: Path, orphan_wait_s: float = 15.0) -> bool:
    """Take the lock now, or within `orphan_wait_s` when only a dead holder's workers still keep it."""
    deadline = time.monotonic() + orphan_wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not _holder_is_dead(path) or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the lock of output folder `out` for the block; a second holder gets one UserError
    naming the first (PID, host, command)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"Cannot create the lock file {path} ({e.strerror}); choose a writable --out") from None
    try:
        if not _acquire(fd, path):
            raise UserError(
                f"{out} is being written by {_holder(path)}; wait for it to finish or choose another --out"
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        try:  # the record only names the holder; a full disk must not stop the stage's own disk-full message
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError:
            pass
        yield path
    finally:
        os.close(fd)  # releases the flock


def overwrite_folder(out: Path) -> Path:
    """Where `--overwrite` builds the new output, beside the old one (issue 17: a kill during an
    overwrite used to leave a half-deleted output)."""
    return out.with_name(out.name + TMP_MARK + "overwrite")


def swap_in(work: Path, out: Path) -> None:
    """Replace `out` by the finished `work` folder: two renames, then the old one is deleted."""
    old = out.with_name(out.name + TMP_MARK + "old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC as an OSError, or as the text of a library's own error (safetensors, torch's zip writer)."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def disk_full_error(
    out: str | os.PathLike, command: str, need_bytes: int | None = None, kept: str = "the previous output is intact"
) -> UserError:
    """The one sentence for a full disk: the folder, the space needed (when known) and free, what was kept."""
    out = Path(out)
    probe = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free / 2**20
    need = f"about {need_bytes / 2**20:.1f} MiB more are needed, " if need_bytes else ""
    return UserError(
        f"No space left on the device of {out} ({need}{free:.1f} MiB are free); {kept}: free space and rerun {command}"
    )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).is_dir() else 0


def refuse_foreign(out: str | os.PathLike, kind: str, own: Iterable[str], option: str = "--out") -> None:
    """Refuse (UserError) an `out` that is a file, holds another kind's manifest, or holds entries
    that are not this stage's (`own` names; hidden files are ignored) — before anything is written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} is a file; pass a folder")
    if not out.is_dir():
        return
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            found = "unreadable"
        if found != kind:
            raise UserError(
                f"{option} {out} holds a '{found}' artifact of another stage; choose another {option} "
                "(lmfusion never writes over another stage's output)"
            )
        return
    own = set(own) | {MANIFEST_NAME}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in own and not p.name.startswith("."))
    if foreign:
        raise UserError(
            f"{option} {out} is not empty and holds no lmfusion {kind} (e.g. {foreign[0]}); choose another {option}"
        )
