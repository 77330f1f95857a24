"""Webdataset `.tar` shards: the deterministic atomic writer (`webdataset.ShardWriter`) and the
tolerant, counting reader of local shards (streamed shards: `webdata.py`).

A shard holds samples as consecutive tar members `{key}.{ext}` (webdataset's convention): an image
(`png`/`jpg`), the caption (`txt`, UTF-8) and `json` (attributes and metadata). The writer fixes every
member's mtime/uid/gid/names, so the same samples always give byte-identical shards, and writes
through a temp name (a crash never leaves a half shard under its final name).

The reader never gives up on a shard: members before a truncation are kept and the loss is counted
(`truncated-shard`, per shard); a sample without image or caption, a non-UTF-8 caption or unreadable
JSON is skipped and counted by reason and key. webdataset's default handler instead drops the rest of
a truncated shard with one warning and counts nothing (issue 12)."""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmfusion_cli.common.atomic import atomic_file
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.data.images import IMAGE_EXTENSIONS

IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")
_INLINE_MAX = 1 << 20  # members up to this size (captions, json) are read while scanning


def safe_key(text: str) -> str:
    """A webdataset-safe key: no dots or slashes (webdataset splits the name at the first dot)."""
    return _KEY_BAD.sub("_", text)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.tar"


@dataclass(frozen=True)
class Sample:
    """One sample to write: `image` is encoded file bytes with extension `image_ext` (png/jpg)."""

    key: str
    image: bytes
    image_ext: str
    caption: str
    meta: dict[str, Any]


def write_shard(path: str | os.PathLike, samples: list[Sample]) -> None:
    """Write `samples` as one webdataset tar at `path` with `webdataset.ShardWriter`, atomically and
    byte-deterministically (fixed mtime/owner/mode; members of a sample in webdataset's sorted order:
    json, image, txt — readers group by key, so shards written before issue 16 read the same)."""
    import webdataset

    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            writer = webdataset.ShardWriter(
                f"{Path(path).name}-%d",
                maxcount=len(samples) + 1,
                verbose=0,
                opener=lambda _name: f,
                encoder=False,
                mtime=0,
                user="",
                group="",
                mode=0o644,
                format="USTAR_FORMAT",
            )
            for s in samples:
                writer.write(
                    {
                        "__key__": s.key,
                        s.image_ext: s.image,
                        "txt": s.caption.encode("utf-8"),
                        "json": json.dumps(s.meta, sort_keys=True).encode("utf-8"),
                    }
                )
            writer.close()


@dataclass
class SampleRef:
    """A sample found in a shard: the image by (offset, size) in the file, caption and meta read."""

    key: str
    image_ext: str
    image_offset: int
    image_size: int
    caption: str
    meta: dict[str, Any]
    image_bytes: bytes | None = None
    """The image itself when the shard was streamed (`data.webdata`); then offset is -1."""


@dataclass
class ShardScan:
    path: Path
    samples: list[SampleRef] = field(default_factory=list)
    log: SkipLog = field(default_factory=SkipLog)
    truncated: bool = False


def finish_sample(key: str, parts: dict[str, Any], scan: ShardScan) -> None:
    """Turn one key's collected members into a SampleRef, or count why it cannot be used."""
    image_exts = [e for e in parts if e in IMAGE_EXTS]
    if not image_exts:
        other = [e for e in parts if e not in ("txt", "json")]
        reason = "unsupported-extension" if other else "missing-image"
        scan.log.skip(key, reason, f"{scan.path.name}: members {sorted(parts)}")
        return
    if "txt" not in parts:
        scan.log.skip(key, "missing-caption", f"{scan.path.name}: no .txt member")
        return
    try:
        caption = parts["txt"].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        scan.log.skip(key, "bad-caption-encoding", f"{scan.path.name}: {e}")
        return
    if not caption:
        scan.log.skip(key, "empty-caption", scan.path.name)
        return
    meta: dict[str, Any] = {}
    if "json" in parts:
        try:
            meta = json.loads(parts["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            scan.log.skip(key, "bad-json", f"{scan.path.name}: {e}")
            return
    image = parts[image_exts[0]]
    if isinstance(image, (bytes, bytearray)):  # streamed: the bytes themselves
        scan.samples.append(SampleRef(key, image_exts[0], -1, len(image), caption, meta, bytes(image)))
        return
    offset, size = image
    scan.samples.append(SampleRef(key, image_exts[0], offset, size, caption, meta))


def scan_shard(path: str | os.PathLike) -> ShardScan:
    """Index a shard without reading images: keys, image offsets, captions and meta; counts problems.

    A truncated shard keeps every complete sample before the cut; the sample cut in two and the
    truncation itself are counted (`truncated-shard`, key = shard file name)."""
    scan = ShardScan(Path(path))
    file_size = scan.path.stat().st_size
    current: str | None = None
    parts: dict[str, Any] = {}
    members, end = 0, 0
    problem = ""
    try:
        with tarfile.open(scan.path, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                key, _, ext = base.partition(".")
                ext = ext.lower()
                if key != current:
                    if current is not None:
                        finish_sample(current, parts, scan)
                    current, parts = key, {}
                if m.offset_data + m.size > file_size:
                    raise tarfile.ReadError(f"member {m.name} runs past the end of the file")
                if ext in parts:
                    scan.log.skip(key, "duplicate-member", f"{scan.path.name}: second {base}")
                    continue
                if ext in IMAGE_EXTS or m.size > _INLINE_MAX:
                    parts[ext] = (m.offset_data, m.size)
                else:
                    f = tar.extractfile(m)
                    parts[ext] = f.read() if f is not None else b""
                members += 1
                end = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if end + 2 * tarfile.BLOCKSIZE > file_size:
            # tarfile reads a file cut exactly between members as a clean end; the missing
            # end-of-archive blocks give the cut away.
            problem = "no end-of-archive marker"
    except (tarfile.TarError, EOFError, OSError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem:
        scan.truncated = True
        scan.log.skip(scan.path.name, "truncated-shard", f"{members} members read before the cut ({problem})")
        # The sample at the cut is kept only if it has all three members our writer emits.
        if current is not None and not {"txt", "json"} <= set(parts):
            scan.log.skip(current, "cut-by-truncation", scan.path.name)
            current = None
    if current is not None:
        finish_sample(current, parts, scan)
    return scan


def read_image_bytes(path: str | os.PathLike, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def iter_samples(path: str | os.PathLike, log: SkipLog | None = None) -> Iterator[dict[str, Any]]:
    """Yield each usable sample of a shard as {key, image (bytes), image_ext, caption, meta}.

    Problems are counted into `log` (if given), never raised."""
    scan = scan_shard(path)
    if log is not None:
        log.merge(scan.log)
    with open(path, "rb") as f:
        for s in scan.samples:
            f.seek(s.image_offset)
            yield {
                "key": s.key,
                "image": f.read(s.image_size),
                "image_ext": s.image_ext,
                "caption": s.caption,
                "meta": s.meta,
            }
