"""Image → text: encode each image with the VAE on the fly, then decode a caption after it.

The sequence is `[BOS] [BOI] <clean image tokens> [EOI]` and the caption follows until EOS or the
token limit (training's `sequence.image_to_caption`); the image is clean (timestep 0). The prefix
runs once into the KV cache and each caption token runs alone against it (`cache=False`
recomputes everything, the reference). Images come as files (decoded with the data stage's rules:
RGB, shorter side resized, centre crop to the VAE's resolution) or PIL images; one that cannot be
read is skipped and counted by reason, the others are captioned.

This file owns the captioning flow; decoding strategies are `decoding.py`'s, files are `io.py`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.common.progress import progress
from lmfusion_cli.common.vae import LatentCodec
from lmfusion_cli.data.images import BadImage, decode_image, resize_center_crop, to_unit_tensor_array
from lmfusion_cli.model.sequence import concat_segments, image_segment, left_pad, text_segment
from lmfusion_cli.sampling.config import DecodingOptions, with_settings
from lmfusion_cli.sampling.context import SequenceContext
from lmfusion_cli.sampling.decoding import beam_candidates, decode

log = logging.getLogger(__name__)


@dataclass
class Captions:
    """Result of `caption_images`: one record per captioned image, in input order, and the skips."""

    records: list[dict] = field(default_factory=list)
    """{"index", "key", "caption", "token_ids"} per captioned image."""
    skips: SkipLog = field(default_factory=SkipLog)
    """Images that could not be read, by reason (`missing-file`, `corrupt-image`, ...)."""


def caption_prefix(model, batch_size: int, bos_id: int | None):
    """The (B, 2 + N + 1) segment `[BOS] [BOI] image [EOI]`, row b holding image b."""
    head = left_pad([([bos_id] if bos_id is not None else []) + [model.boi_id]] * batch_size)
    starts = head.position_ids[:, -1] + 1
    image = image_segment(starts, model.num_image_tokens)
    eoi = text_segment(
        torch.full((batch_size, 1), model.eoi_id, dtype=torch.long), (starts + model.num_image_tokens).unsqueeze(1)
    )
    segment = concat_segments(head, image, eoi)
    segment.image_generate[:] = False  # conditions, not generation targets
    return segment


@torch.no_grad()
def caption_latents(
    model,
    latents: torch.Tensor,
    options: DecodingOptions,
    *,
    bos_id: int | None,
    eos_id: int,
    seeds: Sequence[int] | None = None,
) -> list[list[int]]:
    """Caption token ids (EOS excluded) for clean scaled latents (B, C, H, W) (`options.cache`: the KV cache;
    `options.rerank` image: the beam candidate that makes the image likeliest, its noises seeded by `seeds`)."""
    B = latents.shape[0]
    device = next(model.parameters()).device
    latents = latents.to(device)
    context = SequenceContext(
        model,
        caption_prefix(model, B, bos_id),
        latents,
        torch.zeros(B, device=device),
        use_cache=options.cache,
    )
    if options.rerank == "image":
        from lmfusion_cli.sampling.rerank import rerank_by_image

        ranked = beam_candidates(context, options, stop_ids=[eos_id])
        return rerank_by_image(model, ranked, latents, bos_id=bos_id, seeds=seeds if seeds is not None else range(B))
    return decode(context, options, stop_ids=[eos_id], seeds=seeds)


def load_pixels(item: str | Path | Image.Image, resolution: int) -> torch.Tensor:
    """(3, R, R) float32 in [-1, 1]; raises `BadImage` with the reason for an unusable file."""
    if isinstance(item, Image.Image):
        image = item.convert("RGB")
    else:
        path = Path(item)
        if not path.is_file():
            raise BadImage("missing-file", str(path))
        image = decode_image(path.read_bytes())
    return torch.from_numpy(to_unit_tensor_array(resize_center_crop(image, resolution)))


def caption_images(
    model,
    images: Sequence[str | Path | Image.Image],
    *,
    tokenizer,
    vae: LatentCodec,
    options: DecodingOptions | None = None,
    seed: int = 0,
    batch_size: int = 8,
    processor=None,
    **settings,
) -> Captions:
    """Caption `images` (paths or PIL images). Bad images are skipped and counted, never fatal.

    `options` (default: `DecodingOptions()`) says how text is decoded; keyword `settings` (its field
    names: decoding, max_new_tokens, num_beams, top_p, temperature, cache) change single options.
    Row i's top-p draws use seed + i (i = position in `images`), so a caption does not depend on
    the batch it falls in. A LLaVA-layout base captions through its own vision path and prompt
    (`vlm_captioning`; `processor` defaults to the one saved with the base; the VAE is unused)."""
    options = with_settings(options, settings)
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}.")
    result = Captions()
    if getattr(model, "is_llava", False):
        from lmfusion_cli.sampling.vlm_captioning import caption_with_vlm

        return caption_with_vlm(
            model,
            images,
            result,
            processor=processor,
            options=options,
            seed=seed,
            batch_size=batch_size,
        )
    readable: list[tuple[int, str, torch.Tensor]] = []
    for index, item in enumerate(images):
        key = str(item) if not isinstance(item, Image.Image) else f"image-{index:05d}"
        try:
            readable.append((index, key, load_pixels(item, vae.resolution)))
        except BadImage as e:
            result.skips.skip(key, e.reason, e.detail)
            log.warning("skipping %s: %s", key, e.reason)
    bar = progress(total=len(readable), desc="captioning", unit="img")
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        latents = vae.encode(torch.stack([pixels for _, _, pixels in chunk]))
        expected = (model.config.latent_channels, model.config.latent_size, model.config.latent_size)
        if tuple(latents.shape[1:]) != expected:
            raise UserError(
                f"The VAE makes latents of shape {tuple(latents.shape[1:])} but the checkpoint expects {expected}; "
                f"pass the VAE the model was trained with."
            )
        ids = caption_latents(
            model,
            latents,
            options,
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            seeds=[seed + index for index, _, _ in chunk],
        )
        for (index, key, _), tokens in zip(chunk, ids):
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            result.records.append({"index": index, "key": key, "caption": text, "token_ids": tokens})
        result.skips.keep(len(chunk))
        bar.update(len(chunk))
    bar.close()
    return result


def as_caption_fn(model, *, tokenizer, vae: LatentCodec, **settings):
    """`caption_fn(images) -> list[str]` for `evaluation.generations` (settings as for `caption_images`);
    an image that cannot be used gets the empty caption (and a warning), keeping the list aligned."""

    def caption_fn(images: list) -> list[str]:
        result = caption_images(model, images, tokenizer=tokenizer, vae=vae, **settings)
        by_index = {r["index"]: r["caption"] for r in result.records}
        return [by_index.get(i, "") for i in range(len(images))]

    return caption_fn
