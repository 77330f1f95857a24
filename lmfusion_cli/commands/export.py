"""`lmfusion export`: a run or checkpoint → a self-contained folder to share (issue 16)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    checkpoint: Annotated[
        Path, typer.Argument(help="Run folder (newest complete checkpoint), step folder or model folder.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder (self-contained: weights, tokenizer, VAE, model card).")],
    merged: Annotated[
        bool, typer.Option("--merged", help="Store the base's weights inside the folder (no base download).")
    ] = False,
    base_id: Annotated[
        str | None, typer.Option(help="Hub id to record as the base (default: what the run trained on).")
    ] = None,
    vae_id: Annotated[
        str | None, typer.Option(help="Record this VAE hub id instead of copying the VAE folder.")
    ] = None,
    eval_dirs: Annotated[
        list[Path] | None,
        typer.Option("--eval", help="`lmfusion evaluate` output to quote in the model card; repeatable."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Then upload the folder to this Hub repository (needs a login).")
    ] = None,
) -> None:
    """Export a trained model as one folder that LMFusionModel / LMFusionPipeline.from_pretrained, `sample`
    and `evaluate` load with no other flag, and that `push_to_hub` uploads.

    Examples:

      lmfusion export runs/tiny --out exports/tiny

      lmfusion export runs/small-real --out exports/small --base-id HuggingFaceTB/SmolLM2-135M-Instruct --eval eval/shapes

      lmfusion export runs/tiny/checkpoints/step-00000400 --out exports/tiny-merged --merged

      lmfusion export runs/tiny --out exports/tiny --push-to-hub you/lmfusion-tiny
    """
    from lmfusion_cli.packaging.export import run_export

    folder = run_export(
        checkpoint, out, merged=merged, base_id=base_id, vae_id=vae_id, evals=eval_dirs, overwrite=overwrite
    )
    typer.echo(f"exported to {folder}")
    if push_to_hub:
        from lmfusion_cli.packaging.export import push_folder

        typer.echo(f"pushed to {push_folder(folder, push_to_hub)}")
