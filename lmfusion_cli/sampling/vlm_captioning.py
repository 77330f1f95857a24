"""Image → text on a LLaVA-layout base (LLaVAFusion): the VLM's own vision path and prompt.

LLaVAFusion keeps the VLM's understanding untouched (LMFusion §5), so a caption is LLaVA's own
answer: the image goes through the VLM's processor (AnyRes crops for LLaVA-NeXT) and vision tower,
its rows take the VLM's `<image>` placeholders in the VLM's own prompt (its chat template when the
processor has one), all on the text expert; no VAE is involved. Greedy decoding then gives exactly
the tokens of the VLM's `generate(..., do_sample=False)` for the same image and prompt.

Images are decoded with the data stage's rules (RGB; one that cannot be read is skipped and counted
by reason) but not resized: the VLM's processor does its own resizing. This file owns the LLaVA
captioning flow; `captioning.py` hands LLaVA models here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.progress import progress
from lmfusion_cli.data.images import BadImage, decode_image
from lmfusion_cli.data.llava_inputs import vision_prompt_segment, vlm_prompt
from lmfusion_cli.model import llava
from lmfusion_cli.sampling.context import SequenceContext
from lmfusion_cli.sampling.decoding import DecodingOptions, decode

log = logging.getLogger(__name__)

CAPTION_QUESTION = "Describe the image in one sentence."
"""What the VLM is asked for a caption (inside its chat template, when it has one)."""


@functools.cache
def load_processor(base_id: str):
    """The VLM's own processor (tokenizer + image processor) saved next to its weights."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(base_id)
    except (OSError, ValueError) as e:
        raise UserError(
            f"Cannot load the processor of the LLaVA base {base_id} ({type(e).__name__}); "
            "pass a base folder that holds its processor files."
        ) from e


def caption_prompt(processor, question: str = CAPTION_QUESTION) -> str:
    """The VLM's prompt text for one image + `question`: its chat template, else `<image>\\nquestion`."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"{processor.image_token}\n{question}"


def _open(item: str | Path | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    path = Path(item)
    if not path.is_file():
        raise BadImage("missing-file", str(path))
    return decode_image(path.read_bytes())


@torch.no_grad()
def caption_with_vlm(
    model,
    images: Sequence[str | Path | Image.Image],
    result,
    *,
    processor=None,
    options: DecodingOptions,
    seed: int = 0,
    batch_size: int = 8,
    question: str = CAPTION_QUESTION,
):
    """Caption `images` through the VLM path into `result` (a `captioning.Captions`), and return it.

    Row i's top-p draws use seed + i, as in `captioning.caption_images`."""
    use_cache = options.cache
    if options.rerank != "none":
        raise UserError(
            f"rerank {options.rerank} scores captions with the model's image generation, which a LLaVA base's "
            "captioning path does not use; set rerank to none."
        )
    if options.decoding == "beam" and not use_cache:
        raise UserError(
            "Beam search over a LLaVA base's prompt runs with the KV cache; set cache true "
            "(or decode with greedy / top-p)."
        )
    processor = processor if processor is not None else load_processor(model.base_id)
    tokenizer, token_id = processor.tokenizer, llava.image_token_id(model.base)
    text = caption_prompt(processor, question)
    readable: list[tuple[int, str, Image.Image]] = []
    for index, item in enumerate(images):
        key = str(item) if not isinstance(item, Image.Image) else f"image-{index:05d}"
        try:
            readable.append((index, key, _open(item)))
        except BadImage as e:
            result.skips.skip(key, e.reason, e.detail)
            log.warning("skipping %s: %s", key, e.reason)
    bar = progress(total=len(readable), desc="captioning (VLM)", unit="img")
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        prompts = [vlm_prompt(processor, image, text) for _, _, image in chunk]
        segment = vision_prompt_segment(
            [ids for ids, _, _ in prompts],
            token_id,
            torch.cat([p for _, p, _ in prompts]),
            torch.cat([s for _, _, s in prompts]),
            pad_id=tokenizer.pad_token_id or 0,
        )
        context = SequenceContext(model, segment, use_cache=use_cache)
        ids = decode(context, options, stop_ids=[tokenizer.eos_token_id], seeds=[seed + i for i, _, _ in chunk])
        for (index, key, _), tokens in zip(chunk, ids):
            caption = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            result.records.append({"index": index, "key": key, "caption": caption, "token_ids": tokens})
        result.skips.keep(len(chunk))
        bar.update(len(chunk))
    bar.close()
    return result
