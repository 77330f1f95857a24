"""`lmfusion prepare`: a data source → webdataset image/caption shards + manifest.json (issue 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfusion_cli.commands.common import ConfigRequest, Flag, config_command
from lmfusion_cli.data.config import PrepareConfig

FLAGS = (
    "source",
    "out",
    Flag("input", short="-i"),
    "karpathy_split",
    "num_items",
    "interleaved",
    "captions",
    "seed",
    "resolution",
    "shard_size",
    "workers",
    "val_fraction",
    "test_fraction",
    "overwrite",
    "allow_outside_root",
    "max_pixels",
)


@config_command(PrepareConfig, FLAGS, set_example="--set val_fraction=0.1 --set test_fraction=0.1")
def command(
    request: ConfigRequest,
    coco_root: Annotated[Path | None, typer.Option(help="COCO root (the same as --input for --source coco).")] = None,
) -> None:
    """Turn a source into image/caption shards.

    Examples:

      lmfusion prepare --source shapes --out work/shapes --num-items 2000 --seed 0

      lmfusion prepare --source shapes --out work/shapes-docs --num-items 2000 --interleaved

      lmfusion prepare --source coco --coco-root /data/coco --karpathy-split /data/dataset_coco.json --out work/coco

      lmfusion prepare --source jsonl --input pairs.jsonl --out work/mine --resolution 256 --workers 8

      lmfusion prepare --source folder --input photos/ --out work/photos --val-fraction 0.2
    """
    cfg = request.resolve(input=str(coco_root) if coco_root and request.values["input"] is None else None)
    from lmfusion_cli.data.prepare import run_prepare

    run_prepare(cfg)
