"""`lmfusion sample`: text→image, image→text and interleaved generation from a checkpoint (issue 8)."""

from __future__ import annotations

from lmfusion_cli.commands.common import ConfigRequest, config_command
from lmfusion_cli.sampling.config import SampleConfig

FLAGS = (
    "checkpoint",
    "task",
    "prompt",
    "prompts",
    "images",
    "out",
    "cfg_scale",
    "steps",
    "sampler",
    "seed",
    "batch_size",
    "num_per_prompt",
    "cache",
    "decoding",
    "max_new_tokens",
    "num_beams",
    "rerank",
    "top_p",
    "temperature",
    "max_images",
    "grid_columns",
    "vae",
    "base",
    "tokenizer",
    "device",
    "overwrite",
)


@config_command(SampleConfig, FLAGS, set_example="--set cfg_scale=5 --set steps=50")
def command(request: ConfigRequest) -> None:
    """Generate images from text, captions from images, or interleaved text and images.

    Examples:

      lmfusion sample --checkpoint runs/tiny --prompt "a red circle on a blue background" --out samples/one

      lmfusion sample --checkpoint runs/tiny --prompts prompts.txt --cfg-scale 5 --steps 50 --sampler ddim --out samples/all

      lmfusion sample --checkpoint runs/tiny/checkpoints/step-00000400 --task caption --images photos/ --decoding beam --out caps

      lmfusion sample --checkpoint runs/tiny --task interleaved --prompt "a story:" --max-images 2 --out story
    """
    cfg = request.resolve()
    from lmfusion_cli.sampling.stage import run_sample

    run_sample(cfg)
