"""`generate_images`: prompts → images, the text→image API used by `lmfusion sample` and `evaluate`.

Prompts are tokenised without the tokenizer's own special tokens and laid out as
`[BOS] prompt [BOI]` (see `t2i.py`). Sample i (i = prompt index × num_per_prompt + copy) is drawn
with seed `seed + i` on the CPU in float32, so the same settings give the same pixels whatever the
batch size, and different seeds give different images. Latents are decoded by the VAE codec and
returned as uint8 arrays with one record per sample (prompt, seed, settings); writing them is the
stage's (`stage.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.progress import progress
from lmfusion_cli.common.vae import LatentCodec
from lmfusion_cli.sampling.config import DecodingOptions, with_settings
from lmfusion_cli.sampling.io import to_uint8
from lmfusion_cli.sampling.schedulers import make_sampler
from lmfusion_cli.sampling.t2i import denoise, image_prefix, prompt_denoiser


@dataclass
class GeneratedImages:
    images: list[np.ndarray] = field(default_factory=list)
    """(H, W, 3) uint8 per sample, in sample order."""
    records: list[dict] = field(default_factory=list)
    """Per sample: index, prompt, prompt_index, seed and every sampling setting."""
    latents: torch.Tensor | None = None
    """(n, C, h, w) float32 final latents (before the VAE), in sample order."""


def tokenize_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids without special tokens (BOS/BOI are placed by the layout)."""
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []


@torch.no_grad()
def generate_latents(
    model,
    prompt_ids: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    bos_id: int | None,
    options: DecodingOptions,
    batch_branches: bool = True,
    on_step=None,
) -> torch.Tensor:
    """Denoise one batch: clean latents (B, C, h, w) for tokenised prompts, one seed each (settings:
    `options.cfg_scale`, `steps`, `sampler`, `cache`)."""
    prefixes = [image_prefix(p, bos_id=bos_id, boi_id=model.boi_id) for p in prompt_ids]
    uncond = image_prefix([], bos_id=bos_id, boi_id=model.boi_id)
    denoiser = prompt_denoiser(
        model, prefixes, uncond, options.cfg_scale, use_cache=options.cache, batch_branches=batch_branches
    )
    C, S = model.config.latent_channels, model.config.latent_size
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    device = next(model.parameters()).device
    sampler = make_sampler(model.config, options.sampler, options.steps)
    return denoise(denoiser, sampler, (C, S, S), generators, device=device, on_step=on_step)


def generate_images(
    model,
    prompts: Sequence[str],
    *,
    tokenizer,
    vae: LatentCodec,
    options: DecodingOptions | None = None,
    seed: int = 0,
    batch_size: int = 8,
    num_per_prompt: int = 1,
    keep_latents: bool = False,
    seeds: Sequence[int] | None = None,
    **settings,
) -> GeneratedImages:
    """Generate `num_per_prompt` images for each prompt (sample i uses seed + i, or `seeds[i]`).

    `options` (default: `DecodingOptions()`) says how; keyword `settings` (its field names: cfg_scale,
    steps, sampler, cache) change single options."""
    options = with_settings(options, settings)
    if batch_size < 1 or num_per_prompt < 1:
        raise UserError(f"batch_size and num_per_prompt must be >= 1; got {batch_size}, {num_per_prompt}.")
    make_sampler(model.config, options.sampler, options.steps)  # refuse a bad sampler/steps before any work
    jobs = [(k, prompt) for k, prompt in enumerate(prompts) for _ in range(num_per_prompt)]
    if seeds is not None and len(seeds) != len(jobs):
        raise ValueError(f"got {len(seeds)} seeds for {len(jobs)} samples")
    sample_seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(jobs))]
    recorded = {
        "cfg_scale": options.cfg_scale,
        "steps": options.steps,
        "sampler": options.sampler,
        "cache": options.cache,
        "objective": model.config.objective,
    }
    result = GeneratedImages()
    all_latents = []
    bar = progress(total=len(jobs) * options.steps, desc="sampling", unit="step")
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        chunk_seeds = sample_seeds[start : start + len(chunk)]
        latents = generate_latents(
            model,
            [tokenize_prompt(tokenizer, p) for _, p in chunk],
            chunk_seeds,
            bos_id=tokenizer.bos_token_id,
            options=options,
            on_step=lambda n=len(chunk): bar.update(n),
        )
        pixels = to_uint8(vae.decode(latents))
        for j, ((k, prompt), s) in enumerate(zip(chunk, chunk_seeds)):
            result.images.append(pixels[j])
            result.records.append({"index": start + j, "prompt": prompt, "prompt_index": k, "seed": s, **recorded})
        if keep_latents:
            all_latents.append(latents.cpu())
    bar.close()
    if keep_latents and all_latents:
        result.latents = torch.cat(all_latents)
    return result


def as_generate_fn(model, *, tokenizer, vae: LatentCodec, **settings):
    """`generate_fn(prompts, seeds) -> list[PIL.Image]` for `evaluation.generations` (settings: options=,
    batch_size= and `DecodingOptions` fields, as for `generate_images`)."""
    from PIL import Image

    def generate_fn(prompts: list[str], seeds: list[int]) -> list:
        out = generate_images(model, prompts, tokenizer=tokenizer, vae=vae, seeds=seeds, **settings)
        return [Image.fromarray(image) for image in out.images]

    return generate_fn
