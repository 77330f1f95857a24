"""`lmfusion encode-latents`: prepared shards → a VAE latent cache + manifest (issue 6); `--verify L` re-checks one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfusion_cli.commands.common import ConfigRequest, config_command
from lmfusion_cli.data.config import EncodeConfig

FLAGS = (
    "data",
    "out",
    "vae",
    "resolution",
    "batch_size",
    "workers",
    "gpus",
    "dtype",
    "store",
    "flip",
    "seed",
    "overwrite",
)


@config_command(EncodeConfig, FLAGS, set_example="--set batch_size=16")
def command(
    request: ConfigRequest,
    verify: Annotated[
        Path | None, typer.Option(help="Only re-check this cache (counts, shapes, NaN/inf, hashes).")
    ] = None,
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
    cfg = request.resolve()
    from lmfusion_cli.data.encode import run_encode

    run_encode(cfg)
