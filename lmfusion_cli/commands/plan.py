"""`lmfusion plan`: per-GPU memory, FLOPs and step time of a training config (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lmfusion_cli.commands.common import ConfigRequest, config_command
from lmfusion_cli.training.config import TrainRunConfig


@config_command(
    TrainRunConfig,
    ("dist.gpus", "dist.nodes"),
    set_example="--set train.activation_checkpointing=none --set train.micro_batch_size=13",
)
def command(
    request: ConfigRequest,
    gpu_memory: Annotated[str, typer.Option(help="Memory of one GPU, e.g. 80GiB.")] = "80GiB",
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilisation assumed for the step time.")] = 0.40,
    peak_tflops: Annotated[float, typer.Option(help="Peak dense bf16 TFLOP/s of one GPU (H100 SXM: 989).")] = 989.0,
    caption_tokens: Annotated[int, typer.Option(help="Assumed caption length in tokens.")] = 36,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Say per-GPU memory, FLOPs per step and step time of a training config before renting GPUs.

    Examples:

      lmfusion plan -c pipelines/configs/paper-llama3-8b.yaml --gpus 8 --nodes 4 --gpu-memory 80GiB

      lmfusion plan -c pipelines/configs/coco-llama3-1b.yaml --set train.activation_checkpointing=none --json
    """
    from lmfusion_cli.common.errors import UserError
    from lmfusion_cli.training.plan import PlanOptions, format_plan, make_plan, parse_bytes

    config, overrides = request.config_file, request.overrides
    if config is not None and not Path(config).is_file():
        raise UserError(f"--config {config} does not exist; pass a YAML file such as pipelines/configs/tiny.yaml.")
    from lmfusion_cli.common.configs import read_yaml

    given = read_yaml(config) if config is not None else {}
    needs_latents = not (given.get("data") or {}).get("latents") and not any(
        o.startswith("data.latents=") for o in overrides or []
    )
    # plan reads no data: a latent cache is optional
    cfg = request.resolve(train__out="plan", data__latents="none" if needs_latents else None)
    if mfu <= 0 or mfu > 1 or peak_tflops <= 0 or caption_tokens < 0:
        raise UserError("--mfu must be in (0, 1], --peak-tflops > 0 and --caption-tokens >= 0.")
    options = PlanOptions(
        gpus=cfg.dist.gpus,
        nodes=cfg.dist.nodes,
        gpu_memory=parse_bytes(gpu_memory),
        mfu=mfu,
        peak_tflops=peak_tflops,
        caption_tokens=caption_tokens,
    )
    plan = make_plan(cfg, options)
    typer.echo(json.dumps(plan, indent=2) if as_json else format_plan(plan))
