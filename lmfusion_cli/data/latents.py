"""The latent cache: its on-disk format, the writer of one shard, the reader every stage uses, and `verify`.

Layout of a cache folder L (made by `encode-latents`):

    L/{split}-{shard:05d}.safetensors   tensors, each (N, C, h, w) in the stored dtype:
                                        `mean` and `std` (store "mean-std", the default) or `sample`
                                        (store "sample"); with the flip flag also `mean_flip`/`std_flip`
                                        or `sample_flip` (the horizontally mirrored image; captions are
                                        NOT changed, so "left"/"right" words become wrong for those).
    L/{split}-{shard:05d}.jsonl         N lines {"key", "caption", "meta"} in the tensors' row order
    L/manifest.json                     kind "latents": VAE identity (id, config hash, weights hash,
                                        scaling_factor, shift_factor, latent channels), resolution,
                                        latent_shape, dtype, store, flip, per-split counts, per-file
                                        SHA-256, the source shards' manifest hash, skipped items.

Stored values are the VAE posterior *before* scaling. The reader's `draw` returns the diffusion-space
latent `(z - shift_factor) * scaling_factor` with `z = mean + std * eps` (or the stored sample), and
`to_vae_space` inverts it for decoding. Tensors are memory-mapped with `safetensors.safe_open`, so
opening is cheap and `__getitem__` reads one row. The reader checks each file against its SHA-256 in
the manifest when it first reads it (the records at open, a tensor shard at its first row): a damaged
file is a UserError naming it, never silently different latents (issue 12, item 8)."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import read_manifest, verify_files
from lmfusion_cli.common.vae import to_model_space, to_vae_space

KIND = "latents"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
EXPECT_KEYS = (
    "vae_id",
    "vae_config_hash",
    "vae_weights_sha256",
    "scaling_factor",
    "shift_factor",
    "latent_channels",
    "resolution",
)


def tensor_names(store: str, flip: bool) -> list[str]:
    base = ["mean", "std"] if store == "mean-std" else ["sample"]
    return base + [f"{n}_flip" for n in base] if flip else base


def write_latent_shard(folder: Path, stem: str, tensors: dict[str, torch.Tensor], records: list[dict]) -> None:
    """Write `{stem}.safetensors` and `{stem}.jsonl` atomically (the caller records completion after)."""
    from safetensors.torch import save_file

    from lmfusion_cli.common.atomic import atomic_file, atomic_write_text

    with atomic_file(folder / f"{stem}.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    atomic_write_text(folder / f"{stem}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def expectation(manifest: dict[str, Any]) -> dict[str, Any]:
    """The comparable facts of a cache manifest, under the keys `expect` uses."""
    vae = manifest["vae"]
    return {
        "vae_id": vae["id"],
        "vae_config_hash": vae["config_hash"],
        "vae_weights_sha256": vae["weights_sha256"],
        "scaling_factor": vae["scaling_factor"],
        "shift_factor": vae["shift_factor"],
        "latent_channels": vae["latent_channels"],
        "resolution": manifest["resolution"],
    }


def expect_from_vae(vae_spec: str, resolution: int) -> dict[str, Any]:
    """The `expect` dict for a model that uses the VAE `vae_spec` at `resolution` (loads the VAE)."""
    from lmfusion_cli.common.vae import load_vae, resolve_vae, vae_identity

    spec = resolve_vae(vae_spec)
    ident = vae_identity(spec, load_vae(spec))
    return expectation({"vae": ident, "resolution": resolution})


def check_expectation(path: Path, manifest: dict[str, Any], expect: dict[str, Any]) -> None:
    """Refuse (UserError, one sentence) a cache that does not fit `expect` (any subset of EXPECT_KEYS).

    The VAE counts as the same when its weights and config hashes match, whatever path it came from."""
    unknown = set(expect) - set(EXPECT_KEYS)
    if unknown:
        raise ValueError(f"unknown expect keys {sorted(unknown)}; use {EXPECT_KEYS}")
    have = expectation(manifest)
    for key in ("vae_weights_sha256", "vae_config_hash"):
        if key in expect and expect[key] != have[key]:
            theirs = expect.get("vae_id", "?")
            raise UserError(
                f"Latent cache {path} was made with VAE '{have['vae_id']}' (weights {have['vae_weights_sha256'][:12]}), "
                f"but the model uses VAE '{theirs}' (weights {str(expect.get('vae_weights_sha256', '?'))[:12]}); "
                f"rerun encode-latents with --vae {theirs} or point at a cache made with it."
            )
    fixes = {
        "resolution": "--resolution",
        "latent_channels": "--vae",
        "scaling_factor": "--vae",
        "shift_factor": "--vae",
    }
    for key, option in fixes.items():
        if key in expect and not _same(expect[key], have[key]):
            raise UserError(
                f"Latent cache {path} has {key} {have[key]}, but the model expects {expect[key]}; "
                f"rerun encode-latents with the matching {option} or point at a matching cache."
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


class LatentCache:
    """Random access over a latent cache (all splits, or the ones selected)."""

    def __init__(self, path: Path, manifest: dict[str, Any], splits: Sequence[str] | None = None):
        self.path = path
        self.manifest = manifest
        self.store: str = manifest["store"]
        self.flip: bool = manifest["flip"]
        self.scaling_factor: float = manifest["vae"]["scaling_factor"]
        self.shift_factor: float = manifest["vae"]["shift_factor"]
        self.resolution: int = manifest["resolution"]
        self.latent_shape: tuple[int, ...] = tuple(manifest["latent_shape"])
        self.shards = [s for s in manifest["shards"] if s["count"] and (splits is None or s["split"] in splits)]
        self.starts: list[int] = []
        self.records: list[dict[str, Any]] = []
        for shard in self.shards:
            self.starts.append(len(self.records))
            records_file = self._checked(f"{shard['stem']}.jsonl")
            lines = records_file.read_text(encoding="utf-8").splitlines()
            self.records.extend(json.loads(line) for line in lines)
        self._handles: dict[int, Any] = {}

    def _checked(self, name: str) -> Path:
        """`path/name` after checking it against its SHA-256 in the manifest (UserError naming it)."""
        problems = verify_files(
            self.path, {"files": {k: v for k, v in self.manifest.get("files", {}).items() if k == name}}
        )
        if problems:
            raise UserError(f"{problems[0].rstrip('.')}; rerun encode-latents into a new folder (or restore the file).")
        return self.path / name

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the memory maps
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _row(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < len(self.records):
            raise IndexError(f"latent index {i} out of range for {len(self.records)} items")
        s = bisect.bisect_right(self.starts, i) - 1
        if s not in self._handles:
            from safetensors import safe_open

            self._handles[s] = safe_open(str(self._checked(f"{self.shards[s]['stem']}.safetensors")), framework="pt")
        return self._handles[s], i - self.starts[s]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """{key, caption, attributes, meta, mean, std | sample (+ *_flip)}: tensors (C, h, w), stored dtype."""
        handle, row = self._row(i)
        record = self.records[i]
        item = {
            "key": record["key"],
            "caption": record["caption"],
            "meta": record["meta"],
            "attributes": record["meta"].get("attributes"),
        }
        for name in tensor_names(self.store, self.flip):
            item[name] = handle.get_slice(name)[row : row + 1][0]
        return item

    def draw(self, i: int, generator: torch.Generator | None = None, flip: bool = False) -> torch.Tensor:
        """A diffusion-space latent (C, h, w) fp32: `(z - shift) * scale`, z drawn from the stored posterior."""
        if flip and not self.flip:
            raise ValueError("this cache has no flipped entries (encode-latents --flip)")
        item = self[i]
        suffix = "_flip" if flip else ""
        if self.store == "sample":
            z = item["sample" + suffix].float()
        else:
            mean, std = item["mean" + suffix].float(), item["std" + suffix].float()
            z = mean + std * torch.randn(mean.shape, generator=generator)
        return to_model_space(z, self.scaling_factor, self.shift_factor)

    def to_vae_space(self, latent: torch.Tensor) -> torch.Tensor:
        """Inverse of the scaling in `draw`: diffusion-space latents → what `vae.decode` takes."""
        return to_vae_space(latent, self.scaling_factor, self.shift_factor)


def open_latent_cache(
    path: str | Path, expect: dict[str, Any] | None = None, splits: Sequence[str] | str | None = None
) -> LatentCache:
    """Open a finished cache, refusing (UserError) one that does not fit `expect` (see `check_expectation`)."""
    path = Path(path)
    manifest = read_manifest(path, KIND, what="latent cache")
    if expect:
        check_expectation(path, manifest, expect)
    if isinstance(splits, str):
        splits = [splits]
    return LatentCache(path, manifest, splits)


def verify_cache(path: str | Path) -> list[str]:
    """Re-check a cache: manifest, per-file SHA-256, counts, shapes, NaN/inf. One sentence per problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        manifest = read_manifest(path, KIND, what="latent cache")
    except UserError as e:
        return [str(e)]
    problems = verify_files(path, manifest)
    damaged = {p.split(" ")[0] for p in problems}
    names = tensor_names(manifest["store"], manifest["flip"])
    total = 0
    for shard in manifest["shards"]:
        total += shard["count"]
        if not shard["count"]:
            continue
        st, jl = path / f"{shard['stem']}.safetensors", path / f"{shard['stem']}.jsonl"
        if str(st) in damaged or str(jl) in damaged:
            continue
        try:
            tensors = load_file(str(st))
            lines = jl.read_text(encoding="utf-8").splitlines()
        except (OSError, SafetensorError, UnicodeDecodeError) as e:
            problems.append(f"{st} cannot be read ({type(e).__name__}).")
            continue
        if len(lines) != shard["count"]:
            problems.append(f"{jl} has {len(lines)} records, the manifest says {shard['count']}.")
        for name in names:
            t = tensors.get(name)
            want = (shard["count"], *manifest["latent_shape"])
            if t is None or tuple(t.shape) != want:
                problems.append(
                    f"{st} tensor '{name}' has shape {None if t is None else tuple(t.shape)}, expected {want}."
                )
            elif not torch.isfinite(t.float()).all():
                problems.append(f"{st} tensor '{name}' holds NaN or inf values.")
    if total != manifest["counts"]["kept"]:
        problems.append(f"{path}: shards hold {total} items but the manifest counts {manifest['counts']['kept']}.")
    return problems
