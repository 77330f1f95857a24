"""Encoding shard jobs in this process: DataLoader workers read and decode the images, this thread runs
the VAE, and each finished job is written as one latent shard plus its part record (`encode_jobs`).

Which jobs there are, how they are spread over processes and the manifest at the end are `encode.py`'s."""

from __future__ import annotations

import errno
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog, file_entry
from lmfusion_cli.common.progress import progress
from lmfusion_cli.common.vae import encode_posterior
from lmfusion_cli.data.config import EncodeConfig
from lmfusion_cli.data.images import BadImage, decode_image, resize_center_crop, to_unit_tensor_array
from lmfusion_cli.data.latents import DTYPES, write_latent_shard
from lmfusion_cli.data.restart import write_part
from lmfusion_cli.data.shards import SampleRef, read_image_bytes


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
