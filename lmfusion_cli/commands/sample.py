"""`lmfusion sample`: text→image, image→text and interleaved generation from a checkpoint (issue 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfusion_cli.commands.common import ConfigOption, set_option

SetOption = set_option("--set cfg_scale=5 --set steps=50")


def command(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Run folder (newest complete checkpoint), step folder or model folder.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="t2i | caption | interleaved")] = None,
    prompt: Annotated[str | None, typer.Option(help="One prompt (t2i, interleaved).")] = None,
    prompts: Annotated[
        Path | None, typer.Option(help='Prompt file: .txt one per line, or .jsonl {"prompt": ...}.')
    ] = None,
    images: Annotated[list[Path] | None, typer.Option(help="Image folder or file to caption; repeatable.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    cfg_scale: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (1 = off).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm | ddim | dpm-solver | euler")] = None,
    seed: Annotated[int | None, typer.Option(help="Sample i uses seed + i.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts or images per forward pass.")] = None,
    num_per_prompt: Annotated[int | None, typer.Option(help="Images per prompt (t2i).")] = None,
    cache: Annotated[
        bool | None, typer.Option("--cache/--no-cache", help="Prefix KV cache (--no-cache: slow reference).")
    ] = None,
    decoding: Annotated[str | None, typer.Option(help="greedy | beam | top-p (caption, interleaved).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Most text tokens per caption/document.")] = None,
    num_beams: Annotated[int | None, typer.Option(help="Beam width (--decoding beam).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus mass (--decoding top-p).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature (--decoding top-p).")] = None,
    max_images: Annotated[int | None, typer.Option(help="Most images per interleaved document.")] = None,
    grid_columns: Annotated[int | None, typer.Option(help="Columns of grid.png (0 = square-ish).")] = None,
    vae: Annotated[str | None, typer.Option(help="VAE folder (default: the one the run recorded).")] = None,
    base: Annotated[
        str | None, typer.Option(help="Base LM folder (default: the one the checkpoint points at).")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder (default: the run's).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing output folder.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Generate images from text, captions from images, or interleaved text and images.

    Examples:

      lmfusion sample --checkpoint runs/tiny --prompt "a red circle on a blue background" --out samples/one

      lmfusion sample --checkpoint runs/tiny --prompts prompts.txt --cfg-scale 5 --steps 50 --sampler ddim --out samples/all

      lmfusion sample --checkpoint runs/tiny/checkpoints/step-00000400 --task caption --images photos/ --decoding beam --out caps

      lmfusion sample --checkpoint runs/tiny --task interleaved --prompt "a story:" --max-images 2 --out story
    """
    from lmfusion_cli.config import resolve_config
    from lmfusion_cli.sampling.config import SampleConfig

    cfg = resolve_config(
        SampleConfig,
        config,
        overrides,
        {
            "checkpoint": checkpoint,
            "task": task,
            "prompt": prompt,
            "prompts": prompts,
            "images": [str(p) for p in images] if images else None,
            "out": out,
            "cfg_scale": cfg_scale,
            "steps": steps,
            "sampler": sampler,
            "seed": seed,
            "batch_size": batch_size,
            "num_per_prompt": num_per_prompt,
            "cache": cache,
            "decoding": decoding,
            "max_new_tokens": max_new_tokens,
            "num_beams": num_beams,
            "top_p": top_p,
            "temperature": temperature,
            "max_images": max_images,
            "grid_columns": grid_columns,
            "vae": vae,
            "base": base,
            "tokenizer": tokenizer,
            "device": device,
            "overwrite": overwrite,
        },
    )
    from lmfusion_cli.sampling.stage import run_sample

    run_sample(cfg)
