"""Artifact manifests: what made an artifact, what it holds, what was skipped and why.

Every stage output folder carries a `manifest.json`:

    {"kind": "shards" | "latents" | "run" | ..., "format_version": 1,
     "created_by": {"lmfusion": "0.1.0", "python": ..., "packages": {"torch": ..., ...}},
     "inputs": {...}, "config": {...}, "config_hash": "...",
     "counts": {"kept": N, "skipped": {"reason": n, ...}},
     "skipped_items": [{"key": ..., "reason": ..., "detail": ...}, ...],
     "files": {"relative/name": {"sha256": ..., "bytes": ..., ...}},
     "complete": true}

`read_manifest` refuses, in one sentence, a folder without a complete manifest of the expected kind;
`verify_files` re-hashes the listed files (a flipped byte names the file)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmfusion_cli.common.atomic import atomic_write_json
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_file

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_PACKAGES = ("torch", "transformers", "diffusers", "webdataset", "safetensors", "numpy", "pillow")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def created_by() -> dict[str, Any]:
    from lmfusion_cli import __version__

    return {"lmfusion": __version__, "python": platform.python_version(), "packages": package_versions()}


@dataclass
class SkipLog:
    """Counts kept items and skipped items by reason, remembering which keys were skipped.

    Never drop an item silently: every `skip` is counted and listed (up to `max_listed` entries)."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    items: list[dict[str, str]] = field(default_factory=list)
    max_listed: int = 10_000

    def keep(self, n: int = 1) -> None:
        self.kept += n

    def skip(self, key: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.items) < self.max_listed:
            self.items.append({"key": str(key), "reason": reason, "detail": detail[:300]})

    def merge(self, other: SkipLog) -> None:
        self.kept += other.kept
        self.skipped.update(other.skipped)
        room = self.max_listed - len(self.items)
        self.items.extend(other.items[: max(room, 0)])

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def counts(self) -> dict[str, Any]:
        return {"kept": self.kept, "skipped": dict(sorted(self.skipped.items())), "num_skipped": self.num_skipped}

    def summary(self) -> str:
        """One line for the log, e.g. `kept 1998, skipped 2 (corrupt-image: 1, empty-caption: 1)`."""
        if not self.skipped:
            return f"kept {self.kept}, skipped 0"
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
        return f"kept {self.kept}, skipped {self.num_skipped} ({reasons})"

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "skipped_items": list(self.items)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SkipLog:
        log = cls(kept=d["counts"]["kept"], skipped=Counter(d["counts"]["skipped"]))
        log.items = list(d.get("skipped_items", []))
        return log


def file_entry(path: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    path = Path(path)
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, **extra}


def write_manifest(folder: str | os.PathLike, kind: str, **fields: Any) -> dict[str, Any]:
    """Write `folder/manifest.json` atomically; `complete` is True unless given."""
    manifest = {"kind": kind, "format_version": FORMAT_VERSION, "created_by": created_by(), "complete": True}
    manifest.update(fields)
    atomic_write_json(Path(folder) / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike, kind: str | None = None, what: str = "input") -> dict[str, Any]:
    """Load `folder/manifest.json`, refusing (UserError) a missing, unreadable, incomplete or wrong-kind one."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.exists():
        raise UserError(f"The {what} folder {folder} does not exist; check the path.")
    if not path.is_file():
        raise UserError(
            f"{folder} has no {MANIFEST_NAME}, so it is not a finished lmfusion {kind or 'artifact'}; "
            f"point at a folder made by the matching lmfusion stage (or rerun that stage)."
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read ({e}); rerun the stage that made it.") from e
    if kind is not None and manifest.get("kind") != kind:
        raise UserError(
            f"{path} describes a '{manifest.get('kind')}' artifact, but a '{kind}' artifact is needed here; "
            f"check which folder you passed."
        )
    if not manifest.get("complete", False):
        raise UserError(f"{folder} is incomplete (its manifest says so); rerun the stage that made it to finish it.")
    return manifest


def verify_files(folder: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """Re-hash every file listed in `manifest['files']`; return one problem sentence per bad file."""
    folder = Path(folder)
    problems = []
    for name, entry in sorted(manifest.get("files", {}).items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is listed in the manifest but missing.")
            continue
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}.")
            continue
        if sha256_file(path) != entry["sha256"]:
            problems.append(f"{path} does not match its SHA-256 in the manifest (the file is damaged).")
    return problems
