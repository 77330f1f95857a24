"""The `encode-latents` stage: prepared shards → a VAE latent cache (format in `latents.py`).

Flow: read the shards manifest; scan every shard's index (cheap, headers only; truncation and bad
members counted) and drop duplicate keys across shards (first kept); split the unfinished shards over
`gpus` processes; in each, a `DataLoader` whose workers read and decode images (resize/crop to the
resolution) while the main thread runs `AutoencoderKL.encode`; batches never cross shards, so a shard
is written (atomically) as soon as its last batch is encoded, then its part record — the rerun after a
crash redoes only shards without one (see `restart.py`). An image that fails to decode is skipped and
counted. A full disk stops the run with one sentence; finished shards stay and a rerun completes."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lmfusion_cli.common.atomic import atomic_write_json
from lmfusion_cli.common.configs import config_to_dict
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_file, sha256_json
from lmfusion_cli.common.manifest import MANIFEST_NAME, SkipLog, file_entry, read_manifest, write_manifest
from lmfusion_cli.common.output_folder import output_lock, overwrite_folder, swap_in
from lmfusion_cli.common.progress import progress
from lmfusion_cli.common.vae import encode_posterior, load_vae, resolve_vae, vae_identity
from lmfusion_cli.data.config import EncodeConfig
from lmfusion_cli.data.images import BadImage, decode_image, resize_center_crop, to_unit_tensor_array
from lmfusion_cli.data.latents import DTYPES, KIND, write_latent_shard
from lmfusion_cli.data.restart import exit_with_parent, finish_output, read_part, start_output, write_part
from lmfusion_cli.data.shards import SampleRef, ShardScan, read_image_bytes, scan_shard

log = logging.getLogger(__name__)
_OURS = re.compile(r"^(train|val|test)-\d{5}\.(safetensors|jsonl)$")


@dataclass(frozen=True)
class ShardJob:
    """One source shard to encode into `{stem}.safetensors` + `{stem}.jsonl`."""

    stem: str
    split: str
    path: str
    samples: tuple[SampleRef, ...]


class _DecodeDataset(Dataset):
    """Flat index over the jobs' images: item i → (i, pixels (3, R, R) in [-1, 1] or None, reason, detail)."""

    def __init__(self, refs: list[tuple[str, int, int] | bytes], resolution: int):
        self.refs, self.resolution = refs, resolution

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        ref = self.refs[i]  # (path, offset, size) in a local shard, or the bytes of a streamed image
        try:
            data = ref if isinstance(ref, bytes) else read_image_bytes(*ref)
            img = resize_center_crop(decode_image(data), self.resolution)
        except BadImage as e:
            return i, None, e.reason, e.detail
        return i, torch.from_numpy(to_unit_tensor_array(img)), "", ""


def _collate(batch):
    good = [b for b in batch if b[1] is not None]
    pixels = torch.stack([b[1] for b in good]) if good else None
    return [b[0] for b in good], pixels, [(b[0], b[2], b[3]) for b in batch if b[1] is None]


def _item_noise(seed: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Noise of one item for store=sample: depends only on (seed, key), not on batch or process."""
    g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big"))
    return torch.randn(shape, generator=g)


def _stored(cfg: EncodeConfig, keys: list[str], mean: torch.Tensor, std: torch.Tensor, suffix: str) -> dict:
    dtype = DTYPES[cfg.dtype]
    if cfg.store == "mean-std":
        return {"mean" + suffix: mean.to(dtype), "std" + suffix: std.to(dtype)}
    noise = torch.stack([_item_noise(cfg.seed, k + suffix, tuple(mean.shape[1:])) for k in keys]) if keys else mean
    return {"sample" + suffix: (mean + std * noise).to(dtype)}


def _write_job(
    out: Path, job: ShardJob, cfg: EncodeConfig, rows: list[tuple[int, torch.Tensor, ...]], skips: SkipLog
) -> dict[str, Any]:
    """Write one finished job's latent shard and then its part record; ENOSPC becomes one sentence."""
    rows.sort(key=lambda r: r[0])  # source order
    keys = [job.samples[r[0]].key for r in rows]
    files: dict[str, Any] = {}
    if rows:
        tensors = _stored(cfg, keys, torch.stack([r[1] for r in rows]), torch.stack([r[2] for r in rows]), "")
        if cfg.flip:
            tensors |= _stored(cfg, keys, torch.stack([r[3] for r in rows]), torch.stack([r[4] for r in rows]), "_flip")
        records = [{"key": s.key, "caption": s.caption, "meta": s.meta} for s in (job.samples[r[0]] for r in rows)]
        try:
            write_latent_shard(out, job.stem, tensors, records)
        except Exception as e:  # safetensors reports a full disk as a SafetensorError (issue 17)
            if not (getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)):
                raise
            need = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
            free = shutil.disk_usage(out).free / 2**20
            raise UserError(
                f"No space left on the device of {out} while writing {job.stem}.safetensors (it needs "
                f"about {need:.1f} MiB, {free:.1f} MiB are free); free space and rerun encode-latents "
                "(finished shards are kept, only the rest is redone)"
            ) from None
        files = {f"{job.stem}.{ext}": file_entry(out / f"{job.stem}.{ext}") for ext in ("safetensors", "jsonl")}
    part = {"stem": job.stem, "split": job.split, "count": len(rows), "files": files, **skips.to_dict()}
    write_part(out, job.stem, part)
    return part


def encode_jobs(
    jobs: list[ShardJob],
    cfg: EncodeConfig,
    vae,
    resolution: int,
    show_progress: bool = True,
    scan_logs: list[SkipLog] | None = None,
) -> None:
    """Encode `jobs` in this process with the loaded `vae`: DataLoader workers decode, this thread encodes.

    `scan_logs`: problems found while reading each job's shard (streamed shards), kept in its part record."""
    refs, batches, batch_job = [], [], []
    for j, job in enumerate(jobs):
        start = len(refs)
        refs.extend(
            (job.path, s.image_offset, s.image_size) if s.image_bytes is None else s.image_bytes for s in job.samples
        )
        for b in range(start, len(refs), cfg.batch_size):
            batches.append(list(range(b, min(b + cfg.batch_size, len(refs)))))
            batch_job.append(j)
    starts = {}
    for j in range(len(jobs)):
        starts[j] = starts[j - 1] + len(jobs[j - 1].samples) if j else 0
    remaining = [len(job.samples) for job in jobs]
    rows: list[list] = [[] for _ in jobs]
    skips = [SkipLog() for _ in jobs]
    for log_j, scanned in zip(skips, scan_logs or []):
        log_j.merge(scanned)
    for j, job in enumerate(jobs):
        if not job.samples:
            _write_job(Path(cfg.out), job, cfg, [], skips[j])
    loader = DataLoader(
        _DecodeDataset(refs, resolution), batch_sampler=batches, num_workers=cfg.workers, collate_fn=_collate
    )
    bar = progress(total=len(refs), desc="encode-latents", unit="img") if show_progress else None
    for j, (indices, pixels, bad) in zip(batch_job, loader):
        for i, reason, detail in bad:
            skips[j].skip(jobs[j].samples[i - starts[j]].key, reason, detail)
        if pixels is not None:
            if cfg.flip:
                mean, std = encode_posterior(vae, torch.cat([pixels, pixels.flip(-1)]))
                n = len(indices)
                parts = zip(mean[:n].cpu(), std[:n].cpu(), mean[n:].cpu(), std[n:].cpu())
            else:
                mean, std = encode_posterior(vae, pixels)
                parts = zip(mean.cpu(), std.cpu())
            for i, tensors in zip(indices, parts):
                rows[j].append((i - starts[j], *tensors))
            skips[j].keep(len(indices))
        remaining[j] -= len(indices) + len(bad)
        if bar is not None:
            bar.update(len(indices) + len(bad))
        if remaining[j] == 0:
            _write_job(Path(cfg.out), jobs[j], cfg, rows[j], skips[j])
            rows[j] = []
    if bar is not None:
        bar.close()


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available() and rank < torch.cuda.device_count():
        return torch.device("cuda", rank)
    return torch.device("cpu")


def _child(
    rank: int, world: int, jobs: list[ShardJob], cfg: EncodeConfig, vae_spec: str, resolution: int, parent_pid: int
) -> None:
    """One of `--gpus N` processes (spawned): its share of the shards on its own device."""
    from lmfusion_cli.common.logs import setup_logging

    exit_with_parent(parent_pid)

    setup_logging(quiet=os.environ.get("LMFUSION_QUIET") == "1", verbose=os.environ.get("LMFUSION_VERBOSE") == "1")
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        encode_jobs(jobs, cfg, load_vae(vae_spec, _device(rank)), resolution, show_progress=rank == 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _run_jobs(jobs: list[ShardJob], cfg: EncodeConfig, vae, vae_spec: str, resolution: int) -> None:
    if cfg.gpus == 1 or len(jobs) <= 1:
        encode_jobs(jobs, cfg, vae.to(_device(0)), resolution)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    world = min(cfg.gpus, len(jobs))
    procs = [
        ctx.Process(target=_child, args=(r, world, jobs[r::world], cfg, vae_spec, resolution, os.getpid()))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise UserError(
            f"encode-latents process {failed[0]} of {world} failed (exit code "
            f"{procs[failed[0]].exitcode}, see above); rerun the same command to finish the "
            f"remaining shards."
        )


def _damaged(data: Path, name: str, manifest: dict[str, Any]) -> ShardScan | None:
    """A shard of full size whose bytes are not the ones prepare recorded: skipped whole and counted
    as `damaged-shard` (issue 17: a flipped caption byte went unnoticed). A shorter one is left to the
    reader, which keeps the members before the cut and counts `truncated-shard`."""
    entry = (manifest.get("files") or {}).get(name)
    path = data / name
    if not entry or not path.is_file() or path.stat().st_size < entry.get("bytes", 0):
        return None
    if sha256_file(path) == entry.get("sha256"):
        return None
    log.warning("skipping %s: it does not match its SHA-256 in %s (damaged-shard)", path, MANIFEST_NAME)
    scan = ShardScan(path)
    scan.log.skip(name, "damaged-shard", "SHA-256 differs from prepare's manifest")
    return scan


def _unseen(scan: ShardScan, seen: set[str], name: str) -> list:
    """The shard's samples whose key no earlier shard had (the others skipped as `duplicate-key`); adds
    their keys to `seen`."""
    kept = []
    for s in scan.samples:
        if s.key in seen:
            scan.log.skip(s.key, "duplicate-key", f"{name}: key seen in an earlier shard")
            continue
        seen.add(s.key)
        kept.append(s)
    return kept


def _scan_all(data: Path, manifest: dict[str, Any]) -> tuple[list[ShardJob], list[ShardScan]]:
    """Index every source shard; drop keys already seen in an earlier shard (counted)."""
    seen: set[str] = set()
    jobs, scans = [], []
    for shard in manifest["shards"]:
        scan = _damaged(data, shard["name"], manifest) or scan_shard(data / shard["name"])
        kept = _unseen(scan, seen, shard["name"])
        jobs.append(
            ShardJob(shard["name"].removesuffix(".tar"), shard["split"], str(data / shard["name"]), tuple(kept))
        )
        scans.append(scan)
    return jobs, scans


def run_encode(cfg: EncodeConfig) -> dict[str, Any]:
    """Make (or finish, or reuse) the latent cache `cfg.out` from the shards in `cfg.data`; return its manifest.
    One process at a time per `cfg.out` (issue 17: `output_lock`)."""
    from lmfusion_cli.data.webdata import is_stream_spec

    data, out = Path(cfg.data), Path(cfg.out)
    if not is_stream_spec(cfg.data):  # shard URLs are streamed (issue 16): no manifest to check first
        read_manifest(data, "shards", what="data")  # a bad --data is refused before the lock file
    with output_lock(out, "encode-latents"):
        if not (cfg.overwrite and (out / MANIFEST_NAME).is_file()):
            return _run_encode(cfg)
        work = overwrite_folder(out)  # build beside the old cache, then swap (issue 17)
        manifest = _run_encode(replace(cfg, out=str(work)))
        manifest["config"]["out"] = str(out)  # the cache records where it lives, not where it was built
        atomic_write_json(work / MANIFEST_NAME, manifest)
        swap_in(work, out)
        return manifest


def _start(cfg: EncodeConfig, out: Path, resolution: int, source_hash: str):
    """Load the VAE and open `out` for this config: (vae_spec, vae, identity, config hash, the finished
    manifest when `out` is already complete with the same settings, else None)."""
    vae_spec = resolve_vae(cfg.vae)
    vae = load_vae(vae_spec)
    identity = vae_identity(vae_spec, vae)
    decisive = {
        "vae": {k: v for k, v in identity.items() if k != "id"},
        "resolution": resolution,
        "dtype": cfg.dtype,
        "store": cfg.store,
        "flip": cfg.flip,
        "source": source_hash,
        "seed": cfg.seed if cfg.store == "sample" else None,
    }
    cfg_hash = sha256_json(decisive)[:16]
    finished = start_output(out, KIND, cfg_hash, cfg.overwrite, _OURS, "encode-latents")
    if finished is not None:
        log.info("%s is already complete (same VAE and settings); pass --overwrite to rebuild it", out)
    return vae_spec, vae, identity, cfg_hash, finished


def _run_encode(cfg: EncodeConfig) -> dict[str, Any]:
    from lmfusion_cli.data.webdata import is_stream_spec

    if is_stream_spec(cfg.data):
        return _run_encode_streamed(cfg)
    data, out = Path(cfg.data), Path(cfg.out)
    data_manifest = read_manifest(data, "shards", what="data")
    resolution = cfg.resolution or data_manifest["resolution"]
    source_hash = sha256_file(data / "manifest.json")
    vae_spec, vae, identity, cfg_hash, finished = _start(cfg, out, resolution, source_hash)
    if finished is not None:
        return finished
    jobs, scans = _scan_all(data, data_manifest)

    def done(job: ShardJob) -> dict[str, Any] | None:
        part = read_part(out, job.stem, [])
        return part if part is not None and all((out / f).is_file() for f in part["files"]) else None

    pending = [job for job in jobs if done(job) is None]
    if len(pending) < len(jobs):
        log.info("resuming: %d of %d shards already encoded", len(jobs) - len(pending), len(jobs))
    if pending:
        _run_jobs(pending, cfg, vae, vae_spec, resolution)
    parts = [done(job) for job in jobs]
    missing = [job.stem for job, part in zip(jobs, parts) if part is None]
    if missing:
        raise RuntimeError(f"shards {missing} were not written; rerun to finish them")
    return _write_encode_manifest(out, cfg, cfg_hash, identity, resolution, source_hash, jobs, scans, parts)


def _write_encode_manifest(
    out: Path,
    cfg: EncodeConfig,
    cfg_hash: str,
    identity: dict,
    resolution: int,
    source_hash: str,
    jobs: list[ShardJob],
    scans: list[ShardScan],
    parts: list[dict],
) -> dict[str, Any]:
    skips = SkipLog()
    splits: dict[str, int] = {}
    shards, files = [], {}
    for job, scan, part in zip(jobs, scans, parts):
        skips.merge(scan.log)
        skips.merge(SkipLog.from_dict(part))
        splits[job.split] = splits.get(job.split, 0) + part["count"]
        shards.append({"stem": job.stem, "split": job.split, "count": part["count"]})
        files.update(part["files"])
    factor = identity["downsample_factor"]
    manifest = write_manifest(
        out,
        KIND,
        inputs={
            "data": cfg.data if "://" in cfg.data or ":" in cfg.data.split("/")[0] else str(Path(cfg.data)),
            "data_manifest_sha256": source_hash,
        },  # a URL keeps its `//` (Path would fold it)
        config=config_to_dict(cfg),
        output_config_hash=cfg_hash,
        vae=identity,
        resolution=resolution,
        latent_shape=[identity["latent_channels"], resolution // factor, resolution // factor],
        dtype=cfg.dtype,
        store=cfg.store,
        flip=cfg.flip,
        splits=splits,
        shards=shards,
        files=files,
        **skips.to_dict(),
    )
    finish_output(out)
    (log.warning if skips.num_skipped else log.info)("encode-latents %s: %s", out, skips.summary())
    return manifest


def _run_encode_streamed(cfg: EncodeConfig) -> dict[str, Any]:
    """`--data` is a URL / command / brace pattern (`data.webdata`): stream one shard at a time, encode it,
    write its latent shard, go on; a rerun skips shards already encoded (without fetching them)."""
    from lmfusion_cli.data.webdata import shard_urls, split_of, stream_shard

    out = Path(cfg.out)
    urls = shard_urls(cfg.data)
    if not cfg.resolution:
        raise UserError(
            f"--data {cfg.data} is streamed (no manifest.json to read the image size from); pass "
            "--resolution, the side of the prepared images (e.g. 64)."
        )
    if cfg.gpus > 1:
        log.warning("streamed shards are encoded by one process; --gpus %d is ignored", cfg.gpus)
    source_hash = sha256_json(urls)
    vae_spec, vae, identity, cfg_hash, finished = _start(cfg, out, cfg.resolution, source_hash)
    if finished is not None:
        return finished
    seen: set[str] = set()
    jobs, parts, counters = [], [], {}
    for url in urls:
        scan = stream_shard(url)
        split = split_of(url, scan)
        stem = f"{split}-{counters.get(split, 0):05d}"
        counters[split] = counters.get(split, 0) + 1
        kept = _unseen(scan, seen, scan.path.name)
        job = ShardJob(stem, split, url, tuple(kept))
        part = read_part(out, stem, [])
        if part is None or not all((out / f).is_file() for f in part["files"]):
            log.info("encoding %s → %s (%d samples)", url, stem, len(kept))
            encode_jobs([job], cfg, vae, cfg.resolution, scan_logs=[scan.log])
            part = read_part(out, stem, [])
        jobs.append(job)
        parts.append(part)
    empty = [ShardScan(Path(job.path)) for job in jobs]  # the reading problems are in each part record
    return _write_encode_manifest(out, cfg, cfg_hash, identity, cfg.resolution, source_hash, jobs, empty, parts)
