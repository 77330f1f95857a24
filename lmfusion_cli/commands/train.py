"""`lmfusion train`: cached latents + a frozen text LM → an LMFusion run folder (issue 7)."""

from __future__ import annotations

from lmfusion_cli.commands.common import ConfigRequest, Flag, config_command
from lmfusion_cli.training.config import TrainRunConfig

FLAGS = (
    "data.latents",
    Flag("train.out"),
    Flag("base.path", "--base"),
    "schedule.steps",
    "train.batch_size",
    "train.micro_batch_size",
    "optim.lr",
    "train.seed",
    "train.resume",
    "dist.gpus",
    "dist.nodes",
    "dist.strategy",
    "train.save_every",
)


@config_command(TrainRunConfig, FLAGS, set_example="--set schedule.steps=100 --set optim.lr=3e-4")
def command(request: ConfigRequest) -> None:
    """Train image experts on a frozen text LM (LMFusion).

    Examples:

      lmfusion train --config pipelines/configs/tiny.yaml --latents work/latents --out runs/tiny

      lmfusion train --config pipelines/configs/small-real.yaml --gpus 8 --resume auto

      lmfusion train -c pipelines/configs/tiny.yaml --set optim.lr=3e-4 --set schedule.steps=50
    """
    import os
    import sys

    import typer

    cfg = request.resolve()
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
