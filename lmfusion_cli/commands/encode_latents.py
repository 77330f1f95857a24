"""`lmfusion encode-latents`: prepared shards → a VAE latent cache + manifest (issue 6); `--verify L` re-checks one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfusion_cli.commands.common import ConfigOption, set_option

SetOption = set_option("--set batch_size=16")


def command(
    data: Annotated[
        str | None,
        typer.Option(
            help="Folder of shards made by `lmfusion prepare`, or shard URLs streamed with webdataset: pipe:CMD, http(s)://…/train-{00000..00099}.tar (join several with ::; needs --resolution)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder of the latent cache.")] = None,
    vae: Annotated[
        str | None, typer.Option(help="AutoencoderKL folder or hub id (default: the shipped tiny VAE).")
    ] = None,
    resolution: Annotated[int | None, typer.Option(help="Image side fed to the VAE (default: the shards').")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per VAE call.")] = None,
    workers: Annotated[int | None, typer.Option(help="Image-decoding worker processes (0 = none).")] = None,
    gpus: Annotated[int | None, typer.Option(help="Encoding processes, one device each (CPU without GPU).")] = None,
    dtype: Annotated[str | None, typer.Option(help="Storage dtype: fp16 | bf16 | fp32.")] = None,
    store: Annotated[str | None, typer.Option(help="mean-std (posterior, default) | sample (one draw).")] = None,
    flip: Annotated[bool | None, typer.Option("--flip", help="Also store horizontally flipped latents.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the draws for --store sample.")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Rebuild a finished cache.")] = None,
    verify: Annotated[
        Path | None, typer.Option(help="Only re-check this cache (counts, shapes, NaN/inf, hashes).")
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Encode prepared images with a VAE into a latent cache that training reads.

    Examples:

      lmfusion encode-latents --data work/shapes --out work/shapes-latents

      lmfusion encode-latents --data work/coco --vae stabilityai/sd-vae-ft-mse --resolution 256 --out work/coco-lat --gpus 8

      lmfusion encode-latents --data "https://example.org/shapes/train-{00000..00009}.tar" --resolution 64 --out work/streamed

      lmfusion encode-latents --verify work/shapes-latents
    """
    if verify is not None:
        from lmfusion_cli.common.errors import UserError
        from lmfusion_cli.data.latents import verify_cache

        problems = verify_cache(verify)
        for problem in problems:
            typer.echo(problem, err=True)
        if problems:
            raise UserError(
                f"{verify} failed verification with {len(problems)} problem(s) listed above; rerun "
                f"encode-latents with --overwrite to rebuild it."
            )
        typer.echo(f"{verify}: ok")
        return
    from lmfusion_cli.config import resolve_config
    from lmfusion_cli.data.config import EncodeConfig

    cfg = resolve_config(
        EncodeConfig,
        config,
        overrides,
        {
            "data": data,
            "out": out,
            "vae": vae,
            "resolution": resolution,
            "batch_size": batch_size,
            "workers": workers,
            "gpus": gpus,
            "dtype": dtype,
            "store": store,
            "flip": flip,
            "seed": seed,
            "overwrite": overwrite,
        },
    )
    from lmfusion_cli.data.encode import run_encode

    run_encode(cfg)
