"""Benchmark: images/s of `encode-latents` end to end over images/s of a bare loop calling the VAE
on pre-decoded tensors (issue 6; goal >= 0.9 on the 2-core CPU: loading must not be the bottleneck).

    .venv/bin/python benchmarks/bench_encode.py [--items 512] [--batch-size 32] [--workers 1]

Uses the shipped VAE (lmfusion_cli/assets/tiny-vae) when it exists, else a random VAE of the same
architecture (speed does not depend on the weights). The end-to-end figure includes everything
`run_encode` does: reading the shards manifest, VAE load and weights hash, scanning the tars,
decoding PNGs in DataLoader workers, writing safetensors + jsonl + manifest."""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=1000, help="prepare items per shard (batches never cross shards)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side; the best is kept")
    args = ap.parse_args()

    from lmfusion_cli.common.configs import build_config
    from lmfusion_cli.common.vae import default_vae_path, encode_posterior, load_vae
    from lmfusion_cli.data.config import EncodeConfig, PrepareConfig
    from lmfusion_cli.data.encode import run_encode
    from lmfusion_cli.data.images import to_unit_tensor_array
    from lmfusion_cli.data.prepare import run_prepare
    from lmfusion_cli.data.shards import iter_samples

    tmp = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    try:
        run_prepare(
            build_config(
                PrepareConfig,
                {
                    "out": str(tmp / "data"),
                    "num_items": args.items,
                    "resolution": args.resolution,
                    "shard_size": args.shard_size,
                },
            )
        )
        if (default_vae_path() / "config.json").is_file():
            vae_dir, which = default_vae_path(), "shipped tiny VAE"
        else:
            from diffusers import AutoencoderKL

            vae_dir, which = tmp / "vae", "random VAE (32,64,64) — shipped VAE not built yet"
            AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 64),
                latent_channels=4,
                norm_num_groups=8,
            ).save_pretrained(vae_dir)
        vae = load_vae(str(vae_dir))
        pixels = torch.stack(
            [
                torch.from_numpy(to_unit_tensor_array(Image.open(io.BytesIO(s["image"])).convert("RGB")))
                for t in sorted((tmp / "data").glob("*.tar"))
                for s in iter_samples(t)
            ]
        )
        n = len(pixels)
        encode_posterior(vae, pixels[: args.batch_size])  # warm-up

        def timed(fn) -> tuple[float, float]:
            """(img/s of wall time, img/s of CPU time incl. finished child processes such as loader workers)."""
            c0 = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
            cpu = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - c0
            return n / wall, n / cpu

        def bare() -> None:
            for i in range(0, n, args.batch_size):
                encode_posterior(vae, pixels[i : i + args.batch_size])

        def stage(run: int):
            return lambda: run_encode(
                build_config(
                    EncodeConfig,
                    {
                        "data": str(tmp / "data"),
                        "out": str(tmp / f"lat{run}"),
                        "vae": str(vae_dir),
                        "batch_size": args.batch_size,
                        "workers": args.workers,
                    },
                )
            )

        bare_runs, stage_runs = [], []
        for run in range(args.repeats):  # interleaved, so load from other processes hits both alike
            bare_runs.append(timed(bare))
            stage_runs.append(timed(stage(run)))
        print(
            f"encode-latents: {n} images {args.resolution}px, batch {args.batch_size}, workers {args.workers}, "
            f"{torch.get_num_threads()} threads, {which}"
        )
        for what, col in (("wall", 0), ("CPU", 1)):
            b, s = max(r[col] for r in bare_runs), max(r[col] for r in stage_runs)
            print(f"[{what:4}] bare VAE loop {b:8.1f} img/s   (runs: {', '.join(f'{r[col]:.1f}' for r in bare_runs)})")
            print(
                f"[{what:4}] encode-latents {s:7.1f} img/s   (runs: {', '.join(f'{r[col]:.1f}' for r in stage_runs)})"
            )
            print(f"[{what:4}] ratio {s / b:16.3f}        (goal >= 0.9; best run of each side)")
            print(
                f"[{what:4}] paired ratios per run: "
                f"{', '.join(f'{st[col] / bt[col]:.3f}' for bt, st in zip(bare_runs, stage_runs))}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
