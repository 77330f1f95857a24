"""Shard-by-shard restart bookkeeping shared by `prepare` and `encode-latents`.

An output folder being built holds `.parts/config.json` (the hash of the config that decides the
output bytes) and one `.parts/<shard>.json` per finished shard, written only after the shard's files
are renamed into place. A rerun redoes exactly the shards without a record. The manifest is written
last, then `.parts/` is removed. A finished output is reused when the config matches, refused when it
does not, and cleared when `overwrite` is set — as is an unfinished one started with another config.
Worker processes call `exit_with_parent`, so killing the stage kills its workers too."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from lmfusion_cli.common.atomic import atomic_write_json, remove_stale_temps
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import MANIFEST_NAME, read_manifest

PARTS_DIR = ".parts"


def clear_output(out: Path, ours: re.Pattern) -> None:
    """Remove what the stage writes (files matching `ours`, part records, manifest), nothing else."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    for p in out.iterdir():
        if ours.match(p.name):
            p.unlink()
    remove_stale_temps(out)


def start_output(
    out: Path, kind: str, cfg_hash: str, overwrite: bool, ours: re.Pattern, command: str
) -> dict[str, Any] | None:
    """Return a finished manifest to reuse, or None once `out` is ready for (more) work."""
    if (out / MANIFEST_NAME).is_file():
        manifest = read_manifest(out, kind, what="output")
        if not overwrite and manifest.get("output_config_hash") == cfg_hash:
            return manifest
        if not overwrite:
            raise UserError(
                f"{out} already holds a finished {command} output made with another config; pass "
                f"--overwrite to replace it or choose another --out."
            )
        clear_output(out, ours)
    state = out / PARTS_DIR / "config.json"
    if state.is_file():
        try:
            started = json.loads(state.read_text()).get("output_config_hash")
        except ValueError:
            started = None
        if started != cfg_hash:
            if not overwrite:
                raise UserError(
                    f"{out} holds an unfinished {command} output with another config; pass "
                    f"--overwrite to start over or choose another --out."
                )
            clear_output(out, ours)
    elif out.is_dir() and overwrite:
        clear_output(out, ours)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    remove_stale_temps(out / PARTS_DIR)
    atomic_write_json(state, {"output_config_hash": cfg_hash})
    return None


def part_path(out: Path, name: str) -> Path:
    return out / PARTS_DIR / f"{name}.json"


def write_part(out: Path, name: str, part: dict[str, Any]) -> None:
    atomic_write_json(part_path(out, name), part)


def read_part(out: Path, name: str, needed: list[Path]) -> dict[str, Any] | None:
    """The finished shard's record, or None (no record, a file missing, a damaged record: redo it)."""
    path = part_path(out, name)
    if not path.is_file() or not all(p.is_file() for p in needed):
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finish_output(out: Path) -> None:
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)


def exit_with_parent(parent_pid: int) -> None:
    """For worker processes: exit once the parent is gone (a SIGKILLed parent would leave orphans behind)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
