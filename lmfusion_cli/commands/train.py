"""`lmfusion train`: cached latents + a frozen text LM → an LMFusion run folder (issue 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfusion_cli.commands.common import ConfigOption, set_option

SetOption = set_option("--set schedule.steps=100 --set optim.lr=3e-4")


def command(
    latents: Annotated[Path | None, typer.Option(help="Latent cache folder from encode-latents.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (config, checkpoints, logs).")] = None,
    base: Annotated[str | None, typer.Option(help="Base LM folder, or `tiny` for the embedded one.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps in total.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch in examples per step.")] = None,
    micro_batch_size: Annotated[int | None, typer.Option(help="Examples per process per forward.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of init, data order and noise.")] = None,
    resume: Annotated[str | None, typer.Option(help="auto | never | a checkpoint folder.")] = None,
    gpus: Annotated[int | None, typer.Option(help="Processes per node (re-launches under torchrun).")] = None,
    nodes: Annotated[int | None, typer.Option(help="Nodes (needs --set dist.rdzv_endpoint=HOST:PORT).")] = None,
    strategy: Annotated[str | None, typer.Option(help="fsdp | ddp | none.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (0 = at the end).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Train image experts on a frozen text LM (LMFusion).

    Examples:

      lmfusion train --config pipelines/configs/tiny.yaml --latents work/latents --out runs/tiny

      lmfusion train --config pipelines/configs/small-real.yaml --gpus 8 --resume auto

      lmfusion train -c pipelines/configs/tiny.yaml --set optim.lr=3e-4 --set schedule.steps=50
    """
    import os
    import sys

    from lmfusion_cli.config import resolve_config
    from lmfusion_cli.training.config import TrainRunConfig

    cfg = resolve_config(
        TrainRunConfig,
        config,
        overrides,
        {
            "data.latents": latents,
            "train.out": out,
            "base.path": base,
            "schedule.steps": steps,
            "train.batch_size": batch_size,
            "train.micro_batch_size": micro_batch_size,
            "optim.lr": lr,
            "train.seed": seed,
            "train.resume": resume,
            "dist.gpus": gpus,
            "dist.nodes": nodes,
            "dist.strategy": strategy,
            "train.save_every": save_every,
        },
    )
    from lmfusion_cli.common.launch import format_command, relaunch_command

    relaunch = relaunch_command(cfg.dist, sys.argv[1:])
    if relaunch is not None:
        import logging
        import subprocess

        logging.getLogger("lmfusion_cli").info("re-launching: %s", format_command(relaunch))
        raise typer.Exit(code=subprocess.run(relaunch).returncode)
    from lmfusion_cli.training.loop import run_training

    result = run_training(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        how = "stopped by a signal" if result.stopped_by_signal else "done"
        last = result.last_checkpoint.name if result.last_checkpoint else "none"
        typer.echo(
            f"train {how}: step {result.step}, {result.skipped_steps} skipped step(s), "
            f"last checkpoint {last}, run folder {result.run_dir}"
        )
        typer.echo(result.summary)
