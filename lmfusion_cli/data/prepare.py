"""The `prepare` stage: a source → `OUT/{split}-{shard:05d}.tar` webdataset shards + `OUT/manifest.json`.

Plan: list the source (`sources.list_items`), give each item its split — the source's own (Karpathy,
dataset splits) or a hash of (seed, key), so it never depends on worker count or order — and cut each
split, in key order, into shards of `shard_size` *listed* items. Items that turn out bad when decoded are
skipped and counted, so a shard may hold fewer; fixing shard contents by listed items is what makes
every shard independent: workers build them in any order and a rerun redoes only missing ones.

Restart (see `restart.py`): each finished shard leaves a part record (its counts, skips and hash) after
its tar is renamed into place; a rerun redoes only shards without one. The manifest is written last."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from lmfusion_cli.common.configs import config_to_dict
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_json
from lmfusion_cli.common.manifest import MANIFEST_NAME, SkipLog, file_entry, write_manifest
from lmfusion_cli.common.output_folder import output_lock, overwrite_folder, swap_in
from lmfusion_cli.common.progress import progress
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.images import BadImage, encode_image, resize_center_crop
from lmfusion_cli.data.item_specs import ItemSpec
from lmfusion_cli.data.restart import exit_with_parent, finish_output, read_part, start_output, write_part
from lmfusion_cli.data.shards import Sample, shard_name, write_shard
from lmfusion_cli.data.sources import list_items, load_image

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
_SHARD_RE = re.compile(r"^(train|val|test)-\d{5}\.tar$")
_RUN_ONLY_FIELDS = ("workers", "overwrite")  # do not change the output bytes
# Fields added by issue 17: left out of the hash at their defaults, so earlier outputs keep their hash.
_HASHED_WHEN_CHANGED = {"max_pixels": 64_000_000, "max_caption_chars": 2000, "allow_outside_root": False}


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    items: tuple[ItemSpec, ...]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def output_config_hash(cfg: PrepareConfig) -> str:
    """Hash of the fields that decide the output bytes (not workers/overwrite)."""
    data = {
        k: v
        for k, v in config_to_dict(cfg).items()
        if k not in _RUN_ONLY_FIELDS and not (k in _HASHED_WHEN_CHANGED and v == _HASHED_WHEN_CHANGED[k])
    }
    return sha256_json(data)[:16]


def assign_split(key: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of `key`: a uniform number from sha256(seed, key) against the fractions."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def _at_least_one_val(by_split: dict[str, list[ItemSpec]], cfg: PrepareConfig) -> None:
    """With 2+ items and val_fraction > 0, hold out at least one (issue 16: 5 % of 26 items gave none and
    training then had no validation split): the train item nearest the val cut moves to val."""
    movable = [s for s in by_split["train"] if s.split is None]  # a source's own split is kept
    if by_split["val"] or cfg.val_fraction == 0 or len(movable) < 2:
        return

    def u(spec: ItemSpec) -> bytes:
        return hashlib.sha256(f"{cfg.seed}:{spec.key}".encode()).digest()[:8]

    chosen = min(movable, key=u)
    by_split["train"].remove(chosen)
    by_split["val"].append(chosen)
    log.info(
        "held out %s for validation: val_fraction %g of %d items rounds to none",
        chosen.key,
        cfg.val_fraction,
        sum(len(v) for v in by_split.values()),
    )


def plan_shards(specs: list[ItemSpec], cfg: PrepareConfig) -> list[ShardTask]:
    by_split: dict[str, list[ItemSpec]] = {s: [] for s in SPLITS}
    for spec in specs:
        split = spec.split or assign_split(spec.key, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        by_split[split].append(spec)
    _at_least_one_val(by_split, cfg)
    tasks = []
    for split in SPLITS:
        items = sorted(by_split[split], key=lambda s: s.key)
        for index, start in enumerate(range(0, len(items), cfg.shard_size)):
            tasks.append(ShardTask(split, index, tuple(items[start : start + cfg.shard_size])))
    return tasks


def build_shard(task: ShardTask, cfg: PrepareConfig) -> dict[str, Any]:
    """Load, resize/crop and encode the task's items; write its tar and part record. Runs in workers."""
    out = Path(cfg.out)
    skips = SkipLog()
    samples = []
    for spec in task.items:
        try:
            img = resize_center_crop(load_image(spec, cfg), cfg.resolution)
        except BadImage as e:
            skips.skip(spec.key, e.reason, e.detail)
            continue
        meta = {"key": spec.key, "split": task.split, "attributes": spec.attributes, **spec.extra}
        samples.append(Sample(spec.key, encode_image(img, cfg.image_format), cfg.image_format, spec.caption, meta))
        skips.keep()
    try:
        write_shard(out / task.name, samples)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(
                f"No space left on the device while writing {out / task.name}; free space and rerun "
                f"prepare (finished shards are kept, only the rest is redone)."
            ) from e
        raise
    part = {
        "name": task.name,
        "split": task.split,
        "index": task.index,
        "count": len(samples),
        "file": file_entry(out / task.name, split=task.split, count=len(samples)),
        **skips.to_dict(),
    }
    write_part(out, task.name, part)
    return part


def _run_tasks(tasks: list[ShardTask], cfg: PrepareConfig, total_items: int, done_items: int) -> list[dict]:
    parts = []
    bar = progress(total=total_items, initial=done_items, desc="prepare", unit="item")
    if cfg.workers == 1 or len(tasks) <= 1:
        for task in tasks:
            parts.append(build_shard(task, cfg))
            bar.update(len(task.items))
    else:
        # spawn, not fork: the caller may hold threads (tqdm, torch) that fork would copy mid-lock.
        with ProcessPoolExecutor(
            cfg.workers, mp_context=get_context("spawn"), initializer=exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = {pool.submit(build_shard, task, cfg): task for task in tasks}
            for future in as_completed(futures):
                parts.append(future.result())
                bar.update(len(futures[future].items))
    bar.close()
    return parts


def run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Make (or finish, or reuse) the shards of `cfg.out`; return the manifest."""
    out = Path(cfg.out)
    cfg_hash = output_config_hash(cfg)
    specs, listing_log = list_items(cfg)  # first: a missing input is refused before `out` is touched
    if not specs:
        raise UserError(
            f"{cfg.input or cfg.source} holds no usable image/caption items ({listing_log.summary()}); "
            f"check --input and --source (a 0-item output would look complete downstream)"
        )
    with output_lock(out, "prepare"):  # one process at a time per output folder (issue 17)
        if cfg.overwrite and (out / MANIFEST_NAME).is_file():  # build beside the old output, then swap
            work = overwrite_folder(out)
            manifest = _prepare_locked(cfg, work, cfg_hash, specs, listing_log)
            swap_in(work, out)
            return manifest
        return _prepare_locked(cfg, out, cfg_hash, specs, listing_log)


def _prepare_locked(
    cfg: PrepareConfig, out: Path, cfg_hash: str, specs: list[ItemSpec], listing_log: SkipLog
) -> dict[str, Any]:
    """Build the shards in `out` (`cfg.out`, or the overwrite folder beside it); the manifest records `cfg`."""
    finished = start_output(out, "shards", cfg_hash, cfg.overwrite, _SHARD_RE, "prepare")
    if finished is not None:
        log.info("%s is already complete (same config); pass --overwrite to rebuild it", out)
        return finished
    tasks = plan_shards(specs, cfg)
    parts = {t.name: p for t in tasks if (p := read_part(out, t.name, [out / t.name])) is not None}
    pending = [t for t in tasks if t.name not in parts]
    if parts:
        log.info("resuming: %d of %d shards already done", len(parts), len(tasks))
    done_items = sum(len(t.items) for t in tasks if t.name in parts)
    for part in _run_tasks(pending, replace(cfg, out=str(out)), len(specs), done_items):
        parts[part["name"]] = part
    manifest = _write_prepare_manifest(out, cfg, cfg_hash, tasks, parts, listing_log)
    finish_output(out)
    return manifest


def _write_prepare_manifest(
    out: Path, cfg: PrepareConfig, cfg_hash: str, tasks: list[ShardTask], parts: dict[str, dict], listing_log: SkipLog
) -> dict[str, Any]:
    skips = SkipLog()
    skips.merge(listing_log)
    splits = {s: {"items": 0, "shards": 0} for s in SPLITS}
    shards = []
    for task in tasks:  # plan order: the manifest does not depend on which worker finished first
        part = parts[task.name]
        skips.merge(SkipLog.from_dict(part))
        splits[task.split]["items"] += part["count"]
        splits[task.split]["shards"] += 1
        shards.append({"name": task.name, "split": task.split, "count": part["count"]})
    manifest = write_manifest(
        out,
        "shards",
        inputs={"source": cfg.source, "input": cfg.input, "karpathy_split": cfg.karpathy_split},
        config=config_to_dict(cfg),
        output_config_hash=cfg_hash,
        resolution=cfg.resolution,
        image_format=cfg.image_format,
        seed=cfg.seed,
        splits=splits,
        shards=shards,
        captions_truncated=getattr(listing_log, "truncated", 0),
        max_caption_chars=cfg.max_caption_chars,
        files={t.name: parts[t.name]["file"] for t in tasks},
        **skips.to_dict(),
    )
    # The summary line is a warning when items were skipped, so --quiet still shows it.
    (log.warning if skips.num_skipped else log.info)(
        "prepare %s: %s; %s",
        out,
        skips.summary(),
        ", ".join(f"{s} {v['items']} items in {v['shards']} shards" for s, v in splits.items()),
    )
    return manifest
