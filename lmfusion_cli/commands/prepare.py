"""`lmfusion prepare`: a data source → webdataset image/caption shards + manifest.json (issue 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfusion_cli.commands.common import ConfigOption, set_option

SetOption = set_option("--set val_fraction=0.1 --set test_fraction=0.1")


def command(
    source: Annotated[str | None, typer.Option(help="shapes | coco | folder | jsonl | hf-disk | imagefolder")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder for shards and manifest.json.")] = None,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Input folder/file (not for shapes).")] = None,
    coco_root: Annotated[Path | None, typer.Option(help="COCO root (same as --input for --source coco).")] = None,
    karpathy_split: Annotated[Path | None, typer.Option(help="COCO: Karpathy split JSON.")] = None,
    num_items: Annotated[int | None, typer.Option(help="Shapes: number of items.")] = None,
    interleaved: Annotated[
        bool | None, typer.Option("--interleaved", help="Shapes: add an interleaved document to each item.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of generation and split.")] = None,
    resolution: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    shard_size: Annotated[int | None, typer.Option(help="Items per shard.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(help="Share of items held out for validation (default 0.05; at least one item when 2+ are kept)."),
    ] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="Share of items held out for testing (default 0.05).")
    ] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Rewrite a finished output.")] = None,
    allow_outside_root: Annotated[
        bool | None,
        typer.Option("--allow-outside-root", help="Read images outside the input's root (absolute, ../, symlinks)."),
    ] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Skip images over this many pixels (too-large).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Turn a source into image/caption shards.

    Examples:

      lmfusion prepare --source shapes --out work/shapes --num-items 2000 --seed 0

      lmfusion prepare --source shapes --out work/shapes-docs --num-items 2000 --interleaved

      lmfusion prepare --source coco --coco-root /data/coco --karpathy-split /data/dataset_coco.json --out work/coco

      lmfusion prepare --source jsonl --input pairs.jsonl --out work/mine --resolution 256 --workers 8

      lmfusion prepare --source folder --input photos/ --out work/photos --val-fraction 0.2
    """
    from lmfusion_cli.config import resolve_config
    from lmfusion_cli.data.config import PrepareConfig

    cfg = resolve_config(
        PrepareConfig,
        config,
        overrides,
        {
            "source": source,
            "out": out,
            "input": input or coco_root,
            "karpathy_split": karpathy_split,
            "num_items": num_items,
            "interleaved": interleaved,
            "seed": seed,
            "resolution": resolution,
            "shard_size": shard_size,
            "workers": workers,
            "overwrite": overwrite,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "allow_outside_root": allow_outside_root,
            "max_pixels": max_pixels,
        },
    )
    from lmfusion_cli.data.prepare import run_prepare

    run_prepare(cfg)
