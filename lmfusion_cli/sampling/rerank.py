"""Noisy-channel reranking of captions: choose among beam candidates by how well each explains the image.

Beam search ranks candidate captions c of an image x by the LM's own score, log p(c | x). The same
model also generates images from captions, and its diffusion loss on x given c, at fixed noise levels
and noises shared by all candidates, estimates −log p(x | c) up to a constant (the flow-matching or
ε loss is a weighted ELBO; Li et al. 2023, "Your diffusion model is secretly a zero-shot classifier",
arXiv 2303.16203, classify this way). `rerank: image` keeps the beam candidate whose caption makes the
image likeliest: p(c | x) ∝ p(x | c) p(c) with the beam as the proposal and a flat prior over its
candidates (noisy-channel decoding). Each candidate is scored as the generation example
`[BOS] caption [BOI] x_t [EOI]` at `LEVELS` × `DRAWS` (noise level, noise) pairs; the noises of row b
come from a CPU generator seeded with its seed, so a caption does not depend on the batch it falls in.

This is where the model's generation side, which learns "what does the caption say about the
picture" early, checks the captioner's word-by-word choices (docs/sampling.md, "Reranking captions").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmfusion_cli.model.sequence import caption_to_image, collate

LEVELS: tuple[float, ...] = (0.4, 0.6, 0.8)
"""Noise levels (fractions of the schedule) each candidate's image loss is measured at."""
DRAWS = 1
"""Noises per level (shared by all candidates of one image)."""
MAX_ROWS = 64
"""Most sequences per forward pass."""


@torch.no_grad()
def image_losses(
    model,
    candidates: Sequence[Sequence[int]],
    latents: torch.Tensor,
    noise: torch.Tensor,
    *,
    bos_id: int | None,
    levels: Sequence[float] = LEVELS,
) -> torch.Tensor:
    """(len(candidates),) mean diffusion loss of one image's clean scaled latents (C, H, W) generated after
    each candidate caption (token ids), over `levels` × the noises `noise` (D, C, H, W)."""
    device = latents.device
    rows: list[tuple[int, float, int]] = [
        (c, level, d) for c in range(len(candidates)) for level in levels for d in range(noise.shape[0])
    ]
    examples = [  # one layout per candidate, shared by its (level, noise) rows; the image rides along below
        caption_to_image(
            ids, num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=bos_id
        )
        for ids in candidates
    ]
    noise = noise.to(device, latents.dtype)
    losses = torch.empty(len(rows), dtype=torch.float32)
    for start in range(0, len(rows), MAX_ROWS):
        chunk = rows[start : start + MAX_ROWS]
        batch, _ = collate([examples[c] for c, _, _ in chunk])
        fractions = torch.tensor([level for _, level, _ in chunk])
        out = model(
            batch.to(device),
            latents.unsqueeze(0).expand(len(chunk), *latents.shape),
            timesteps=model.diffusion.fixed_timesteps(fractions).to(device),
            noise=noise[[d for _, _, d in chunk]],
        )
        losses[start : start + len(chunk)] = out.image_losses.float().cpu()
    return losses.view(len(candidates), -1).mean(dim=1)


@torch.no_grad()
def rerank_by_image(
    model,
    ranked: Sequence[Sequence[tuple[float, list[int]]]],
    latents: torch.Tensor,
    *,
    bos_id: int | None,
    seeds: Sequence[int],
) -> list[list[int]]:
    """Per row b, the candidate of `ranked[b]` ((score, token ids) best first, from `decoding.beam_candidates`)
    whose caption gives image b (`latents[b]`, clean, scaled) the lowest diffusion loss; the empty caption
    only when it is the only candidate. Row b's noises use `seeds[b]`."""
    chosen: list[list[int]] = []
    for b, candidates in enumerate(ranked):
        texts = [ids for _, ids in candidates if ids] or [ids for _, ids in candidates]
        if len(texts) <= 1:
            chosen.append(list(texts[0]) if texts else [])
            continue
        generator = torch.Generator().manual_seed(int(seeds[b]))
        noise = torch.randn((DRAWS, *latents.shape[1:]), generator=generator)
        losses = image_losses(model, texts, latents[b], noise, bos_id=bos_id)
        chosen.append(list(texts[int(losses.argmin())]))
    return chosen
