"""Interleaved generation: the model writes text, opens an image with BOI, and continues after EOI.

For one prompt, `[BOS] prompt` goes into a `SequenceContext`; text is decoded (greedy or top-p)
until EOS, the token budget, or BOI. On BOI the context gets the BOI token and an image is denoised
against everything so far (the conditional branch: the context's cache) with classifier-free
guidance against the empty caption `[BOS] [BOI]` (the unconditional branch training's caption
dropout teaches); the clean image and EOI are then appended (timestep 0, as a committed image) and
text decoding resumes. At most `max_images` images; a BOI past that ends the document
(`stop_reason: image-limit`). Image k of prompt p uses the noise seed `seed + k`, text top-p draws a
generator seeded with `seed`.

This file owns the alternation; denoising is `t2i.py`'s and token choice `decoding.py`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.vae import LatentCodec
from lmfusion_cli.model.sequence import MixedBatch, left_pad
from lmfusion_cli.sampling.config import DecodingOptions, interleaved_decoding_error, with_settings
from lmfusion_cli.sampling.context import Branch, SequenceContext
from lmfusion_cli.sampling.decoding import sample_until
from lmfusion_cli.sampling.generate import tokenize_prompt
from lmfusion_cli.sampling.io import to_uint8
from lmfusion_cli.sampling.schedulers import make_sampler
from lmfusion_cli.sampling.t2i import GuidedDenoiser, denoise


@dataclass
class InterleavedDocument:
    prompt: str
    seed: int
    segments: list[dict] = field(default_factory=list)
    """In order: {"type": "text", "text", "token_ids"} or {"type": "image", "image": k}."""
    images: list[np.ndarray] = field(default_factory=list)
    """(H, W, 3) uint8 per generated image."""
    latents: list[torch.Tensor] = field(default_factory=list)
    """(C, h, w) final latents per image."""
    stop_reason: str = ""
    """`eos`, `max-new-tokens` or `image-limit`."""


@torch.no_grad()
def generate_document(
    model,
    prompt_ids: Sequence[int],
    *,
    bos_id: int | None,
    eos_id: int,
    options: DecodingOptions,
    max_images: int = 2,
    seed: int = 0,
    prefix: MixedBatch | None = None,
) -> tuple[list[dict], list[torch.Tensor], str]:
    """Token-level interleaved generation for one prompt: (segments, image latents, stop reason).

    Text segments carry `token_ids`; images are (C, h, w) clean latents. `prefix` (one row) replaces
    `[BOS] prompt`, e.g. a LLaVA base's prompt with understanding images on its vision path
    (`data.llava_inputs.vision_prompt_segment`)."""
    if problem := interleaved_decoding_error(options.decoding):
        raise UserError(problem)
    use_cache, cfg_scale = options.cache, options.cfg_scale
    head = [bos_id] if bos_id is not None else []
    prefix = left_pad([head + list(prompt_ids)]) if prefix is None else prefix
    context = SequenceContext(model, prefix, use_cache=use_cache)
    uncond = SequenceContext(model, left_pad([head + [model.boi_id]]), use_cache=use_cache).branch()
    generators = [torch.Generator().manual_seed(seed)] if options.decoding == "top-p" else None
    C, S = model.config.latent_channels, model.config.latent_size
    segments: list[dict] = []
    latents: list[torch.Tensor] = []
    budget = options.max_new_tokens
    while True:
        tokens, stops = sample_until(
            context, replace(options, max_new_tokens=budget), [eos_id, model.boi_id], generators
        )
        budget -= len(tokens) + (stops[0] is not None)
        if tokens:
            segments.append({"type": "text", "token_ids": tokens[0]})
        if stops[0] == eos_id:
            return segments, latents, "eos"
        if stops[0] is None:
            return segments, latents, "max-new-tokens"
        if len(latents) >= max_images:
            return segments, latents, "image-limit"
        context.add_tokens(torch.tensor([model.boi_id]))  # the text before it is in the context already
        branches = [context.branch()] + ([uncond] if cfg_scale != 1.0 else [])
        if use_cache and len(branches) == 2:
            branches = [Branch.stack(branches)]  # both branches as one batch
        denoiser = GuidedDenoiser(model, branches, 1, cfg_scale)
        image = denoise(
            denoiser,
            make_sampler(model.config, options.sampler, options.steps),
            (C, S, S),
            [torch.Generator().manual_seed(seed + len(latents))],
            device=context.device,
        )
        latents.append(image[0].cpu())
        segments.append({"type": "image", "image": len(latents) - 1})
        if budget <= 0:
            return segments, latents, "max-new-tokens"
        context.add_image(image, model.eoi_id)


def generate_interleaved(
    model,
    prompts: Sequence[str],
    *,
    tokenizer,
    vae: LatentCodec,
    options: DecodingOptions | None = None,
    max_images: int = 2,
    seed: int = 0,
    **settings,
) -> list[InterleavedDocument]:
    """One interleaved document per prompt (prompt p uses seed + p·1000, its images seed + p·1000 + k).

    `options` (default: `DecodingOptions()`) says how text is decoded and images denoised; keyword
    `settings` (its field names) change single options."""
    options = with_settings(options, settings)
    make_sampler(model.config, options.sampler, options.steps)  # refuse a bad sampler/steps before any work
    if max_images < 0:
        raise UserError(f"max_images must be >= 0, got {max_images}.")
    documents = []
    for p, prompt in enumerate(prompts):
        doc_seed = seed + 1000 * p
        segments, latents, reason = generate_document(
            model,
            tokenize_prompt(tokenizer, prompt),
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            options=options,
            max_images=max_images,
            seed=doc_seed,
        )
        for segment in segments:
            if segment["type"] == "text":
                segment["text"] = tokenizer.decode(segment["token_ids"], skip_special_tokens=True)
        images = list(to_uint8(vae.decode(torch.stack(latents)))) if latents else []
        documents.append(
            InterleavedDocument(
                prompt=prompt, seed=doc_seed, segments=segments, images=images, latents=latents, stop_reason=reason
            )
        )
    return documents
