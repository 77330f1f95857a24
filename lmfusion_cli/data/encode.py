"""The `encode-latents` stage: prepared shards → a VAE latent cache (format in `latents.py`).

Flow: read the shards manifest; scan every shard's index (cheap, headers only; truncation and bad
members counted) and drop duplicate keys across shards (first kept); split the unfinished shards over
`gpus` processes (`common/launch.launch_local`, torchrun's agent, as `train --gpus` uses); in each,
`encode_jobs.py` encodes its share: a `DataLoader` whose workers read and decode images (resize/crop to
the resolution) while the main thread runs `AutoencoderKL.encode`; batches never cross shards, so a shard
is written (atomically) as soon as its last batch is encoded, then its part record — the rerun after a
crash redoes only shards without one (see `restart.py`). An image that fails to decode is skipped and
counted. A full disk stops the run with one sentence; finished shards stay and a rerun completes."""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lmfusion_cli.common.atomic import atomic_write_json
from lmfusion_cli.common.configs import config_to_dict
from lmfusion_cli.common.devices import rank_device
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_file, sha256_json
from lmfusion_cli.common.launch import LaunchFailed, launch_local, launched_rank
from lmfusion_cli.common.manifest import MANIFEST_NAME, SkipLog, read_manifest, write_manifest
from lmfusion_cli.common.output_folder import output_lock, overwrite_folder, swap_in
from lmfusion_cli.common.vae import load_vae, resolve_vae, vae_identity
from lmfusion_cli.data.config import EncodeConfig
from lmfusion_cli.data.encode_jobs import ShardJob, encode_jobs
from lmfusion_cli.data.latents import KIND
from lmfusion_cli.data.restart import exit_with_parent, finish_output, read_part, start_output
from lmfusion_cli.data.shards import ShardScan, scan_shard

log = logging.getLogger(__name__)
_OURS = re.compile(r"^(train|val|test)-\d{5}\.(safetensors|jsonl)$")


def _encode_rank(jobs: list[ShardJob], cfg: EncodeConfig, vae_spec: str, resolution: int, parent_pid: int) -> None:
    """One of `--gpus N` processes (`launch_local`): its share of the shards on its own device."""
    from lmfusion_cli.common.logs import setup_logging

    exit_with_parent(parent_pid)
    setup_logging(quiet=os.environ.get("LMFUSION_QUIET") == "1", verbose=os.environ.get("LMFUSION_VERBOSE") == "1")
    place = launched_rank()
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // place.world_size))
    share = jobs[place.rank :: place.world_size]
    try:
        encode_jobs(share, cfg, load_vae(vae_spec, rank_device(place.local_rank)), resolution, place.rank == 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _run_jobs(jobs: list[ShardJob], cfg: EncodeConfig, vae, vae_spec: str, resolution: int) -> None:
    if cfg.gpus == 1 or len(jobs) <= 1:
        encode_jobs(jobs, cfg, vae.to(rank_device(0)), resolution)
        return
    world = min(cfg.gpus, len(jobs))
    try:
        launch_local(_encode_rank, (jobs, cfg, vae_spec, resolution, os.getpid()), world)
    except LaunchFailed as e:
        rank, code = next(iter(e.exit_codes.items()))
        raise UserError(
            f"encode-latents process {rank} of {world} failed (exit code {code}, see above); rerun the same "
            "command to finish the remaining shards."
        ) from None


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
